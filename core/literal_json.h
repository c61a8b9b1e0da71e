// Reads a nested literal from JSON text, in the encoding the command-line
// tool and the conformance cases use: an integer has no decimal point or
// exponent (3), a float has one (3.0); {"re": x, "im": y} is a complex
// number; "nan", "inf" and "-inf" are non-finite floats; true/false are
// bools. Any other string, null, object, or an integer past int64 becomes a
// Literal::Invalid leaf, which the conversion rejects.
#ifndef ASARRAY_CORE_LITERAL_JSON_H_
#define ASARRAY_CORE_LITERAL_JSON_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/literal.h"

namespace asarray {

// INVALID_ARGUMENT when the text is not JSON or nests deeper than kMaxRank.
absl::StatusOr<Literal> ParseLiteralJson(absl::string_view text);

// The same for the first JSON value in `text`, ignoring whatever follows it
// (for reading a literal embedded in a larger document).
absl::StatusOr<Literal> ParseLiteralJsonPrefix(absl::string_view text);

}  // namespace asarray

#endif  // ASARRAY_CORE_LITERAL_JSON_H_
