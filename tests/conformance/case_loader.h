// Test support: reads the torch-produced conformance cases (format in the
// README beside cases.jsonl) and judges an outcome against a case. Shared by
// every runner: the core alone, and the server over each transport.
#ifndef ASARRAY_TESTS_CONFORMANCE_CASE_LOADER_H_
#define ASARRAY_TESTS_CONFORMANCE_CASE_LOADER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "core/layout.h"
#include "core/literal.h"
#include "core/plan.h"

namespace asarray::testing {

struct ConformanceCase {
  std::string id;
  std::vector<std::string> tags;

  bool is_array = false;
  // An array input: a view into `storage`.
  DType dtype = DType::kFloat32;
  Layout layout;
  std::string storage;  // raw little-endian bytes of the whole storage
  // A nested input.
  Literal literal;

  ConvertOptions options;

  // Either an error code or a tensor.
  std::optional<absl::StatusCode> expect_error;
  std::string torch_message;
  DType expect_dtype = DType::kFloat32;
  Dims expect_shape;
  Dims expect_strides;
  std::string expect_data;                   // row-major logical bytes
  std::optional<bool> expect_shares_memory;  // nullopt: either answer is right
  bool expect_requires_grad = false;
  bool expect_warning = false;
};

// Reads every line of a .jsonl file; INVALID_ARGUMENT names the line that
// does not parse.
absl::StatusOr<std::vector<ConformanceCase>> LoadCases(const std::string& path);

// What a conversion produced, however it ran.
struct Outcome {
  absl::Status status;
  DType dtype = DType::kFloat32;
  Dims shape;
  Dims strides;
  bool requires_grad = false;
  bool shares_memory = false;
  std::string data;  // row-major logical bytes
  std::vector<std::string> warnings;
};

// "" when `outcome` is what the case expects, otherwise what differs. With
// `inline_transport` the array input was sent as bytes: nothing may alias it,
// and copy=False must fail with FAILED_PRECONDITION.
std::string Judge(const ConformanceCase& c, const Outcome& outcome, bool inline_transport);

// The elements of a strided view, row-major and contiguous.
std::string GatherRowMajor(const void* base, DType dtype, const Layout& layout);

// The cases file to run: $ASARRAY_CONFORMANCE_CASES when set, else `fallback`.
std::string CasesPath(const std::string& fallback);

}  // namespace asarray::testing

#endif  // ASARRAY_TESTS_CONFORMANCE_CASE_LOADER_H_
