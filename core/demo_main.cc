// asarray_demo: converts a JSON literal with the core library and prints the
// result, e.g.  asarray_demo '[[1, 2.5], [3, 4]]' --dtype float16
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/cast.h"
#include "core/literal_json.h"
#include "core/plan.h"

namespace {

absl::Status Run(int argc, char** argv) {
  if (argc < 2) {
    return absl::InvalidArgumentError("usage: asarray_demo LITERAL [--dtype D] [--requires-grad]");
  }
  asarray::ConvertOptions options;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
      absl::StatusOr<asarray::DType> dtype = asarray::ParseDType(argv[++i]);
      if (!dtype.ok()) return dtype.status();
      options.dtype = *dtype;
    } else if (std::strcmp(argv[i], "--requires-grad") == 0) {
      options.requires_grad = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument '", argv[i], "'"));
    }
  }
  absl::StatusOr<asarray::Literal> literal = asarray::ParseLiteralJson(argv[1]);
  if (!literal.ok()) return literal.status();
  asarray::LiteralInfo info;
  absl::StatusOr<asarray::Plan> plan = asarray::PlanLiteral(*literal, options, &info);
  if (!plan.ok()) return plan.status();
  const int64_t numel = asarray::NumElements(plan->layout.shape).value();
  std::vector<unsigned char> data(numel * asarray::ItemSize(plan->dtype));
  absl::Status stored = asarray::StoreLiteral(*literal, info, data.data());
  if (!stored.ok()) return stored;

  // Widen to complex128 to print every dtype the same way.
  std::vector<double> wide(2 * numel);
  asarray::Layout flat{{numel}, {1}, 0};
  absl::Status cast = asarray::CastCopy({data.data(), plan->dtype, flat},
                                        {wide.data(), asarray::DType::kComplex128, flat});
  if (!cast.ok()) return cast;
  std::vector<std::string> values;
  for (int64_t i = 0; i < numel; ++i) {
    values.push_back(asarray::IsComplex(plan->dtype)
                         ? absl::StrCat(wide[2 * i], "+", wide[2 * i + 1], "j")
                         : absl::StrCat(wide[2 * i]));
  }
  std::printf("dtype=%s shape=%s strides=%s requires_grad=%s\nvalues (row-major): [%s]\n",
              std::string(asarray::DTypeName(plan->dtype)).c_str(),
              asarray::DimsToString(plan->layout.shape).c_str(),
              asarray::DimsToString(plan->layout.strides).c_str(),
              plan->requires_grad ? "true" : "false", absl::StrJoin(values, ", ").c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  absl::Status status = Run(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
