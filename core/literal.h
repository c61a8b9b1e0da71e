// Nested literals, as torch.asarray([[1, 2.5], [3, 4]]) receives them: a tree
// of lists whose leaves are bool, int64, double or complex values. A leaf that
// is none of these (a string, null, an object, an integer past int64) is kept
// as kInvalid with a description, so that the conversion rejects it with
// INVALID_ARGUMENT exactly where torch would.
//
// Literal is a value type; const methods are thread-safe.
#ifndef ASARRAY_CORE_LITERAL_H_
#define ASARRAY_CORE_LITERAL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/layout.h"

namespace asarray {

class Literal {
 public:
  enum class Kind : uint8_t { kBool, kInt, kFloat, kComplex, kList, kInvalid };

  static Literal Bool(bool v);
  static Literal Int(int64_t v);
  static Literal Float(double v);
  static Literal Complex(double re, double im);
  static Literal List(std::vector<Literal> items);
  // `what` says what the value was, e.g. "the string 'a'" or "null".
  static Literal Invalid(std::string what);

  Kind kind() const { return kind_; }
  bool bool_value() const { return int_ != 0; }
  int64_t int_value() const { return int_; }
  double float_value() const { return re_; }  // also the real part of a complex
  double imag_value() const { return im_; }
  const std::vector<Literal>& items() const { return items_; }
  const std::string& invalid_description() const { return invalid_; }

 private:
  Kind kind_ = Kind::kInvalid;
  int64_t int_ = 0;
  double re_ = 0;
  double im_ = 0;
  std::vector<Literal> items_;
  std::string invalid_;
};

// What a literal becomes: its dtype (inferred as torch does when none is
// requested) and its shape (from the first element at each depth).
struct LiteralInfo {
  DType dtype;
  Dims shape;
};

// Inference: all bool -> bool; ints and bools -> int64; any float -> float32;
// any complex -> complex64; an empty list -> float32. Fails with
// INVALID_ARGUMENT on values that are not numbers (when inferring), nesting
// deeper than kMaxRank, or more elements than int64 counts.
absl::StatusOr<LiteralInfo> AnalyzeLiteral(const Literal& literal, std::optional<DType> requested);

// Writes the literal's values as `info.dtype`, row-major and contiguous, to
// `dst` (ItemSize * numel bytes), or only validates when dst is null.
// INVALID_ARGUMENT names the index of the first offending element: a ragged
// list, a list where a number belongs or the reverse, a value that is not a
// number, complex into a real dtype, or an integer dtype that cannot hold the
// value (torch's overflow rules: a float must lie within the type's range; a
// negative int may wrap into an unsigned type down to -max).
absl::Status StoreLiteral(const Literal& literal, const LiteralInfo& info, void* dst);

}  // namespace asarray

#endif  // ASARRAY_CORE_LITERAL_H_
