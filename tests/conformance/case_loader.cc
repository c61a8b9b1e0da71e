#include "tests/conformance/case_loader.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "core/cast.h"
#include "core/literal_json.h"
#include "nlohmann/json.hpp"

namespace asarray::testing {
namespace {

using Json = nlohmann::json;

absl::StatusOr<std::string> Base64(const Json& j) {
  std::string out;
  if (!absl::Base64Unescape(j.get<std::string>(), &out)) {
    return absl::InvalidArgumentError("bad base64");
  }
  return out;
}

absl::Status ParseCase(const std::string& line, ConformanceCase* c) {
  const Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not JSON");
  c->id = j.at("id").get<std::string>();
  c->tags = j.at("tags").get<std::vector<std::string>>();

  const Json& input = j.at("input");
  c->is_array = input.at("kind") == "array";
  if (c->is_array) {
    absl::StatusOr<DType> dtype = ParseDType(input.at("dtype").get<std::string>());
    if (!dtype.ok()) return dtype.status();
    c->dtype = *dtype;
    c->layout.shape = input.at("shape").get<Dims>();
    c->layout.strides = input.at("strides").get<Dims>();
    c->layout.offset = input.at("offset").get<int64_t>();
    absl::StatusOr<std::string> storage = Base64(input.at("storage"));
    if (!storage.ok()) return storage.status();
    c->storage = *std::move(storage);
  } else {
    // The literal is re-read from the raw text: integers past int64 must keep
    // their digits, which a DOM parse would round into doubles.
    const size_t input_at = line.find("\"input\"");
    const size_t value_at = line.find("\"value\"", input_at);
    const size_t colon = line.find(':', value_at);
    if (input_at == std::string::npos || value_at == std::string::npos) {
      return absl::InvalidArgumentError("nested input without a value");
    }
    absl::StatusOr<Literal> literal = ParseLiteralJsonPrefix(line.substr(colon + 1));
    if (!literal.ok()) return literal.status();
    c->literal = *std::move(literal);
  }

  const Json& kwargs = j.at("kwargs");
  if (kwargs.contains("dtype")) {
    absl::StatusOr<DType> dtype = ParseDType(kwargs.at("dtype").get<std::string>());
    if (!dtype.ok()) return dtype.status();
    c->options.dtype = *dtype;
  }
  if (kwargs.contains("copy")) c->options.copy = kwargs.at("copy").get<bool>();
  if (kwargs.contains("requires_grad")) {
    c->options.requires_grad = kwargs.at("requires_grad").get<bool>();
  }
  if (kwargs.contains("device")) {
    absl::StatusOr<Device> device = ParseDevice(kwargs.at("device").get<std::string>());
    if (!device.ok()) return device.status();
    c->options.device = *device;
  }

  const Json& expect = j.at("expect");
  if (expect.contains("error")) {
    const std::string code = expect.at("error").get<std::string>();
    if (code == "FAILED_PRECONDITION") {
      c->expect_error = absl::StatusCode::kFailedPrecondition;
    } else if (code == "INVALID_ARGUMENT") {
      c->expect_error = absl::StatusCode::kInvalidArgument;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown expected code ", code));
    }
    c->torch_message = expect.value("torch", "");
    return absl::OkStatus();
  }
  absl::StatusOr<DType> dtype = ParseDType(expect.at("dtype").get<std::string>());
  if (!dtype.ok()) return dtype.status();
  c->expect_dtype = *dtype;
  c->expect_shape = expect.at("shape").get<Dims>();
  c->expect_strides = expect.at("strides").get<Dims>();
  absl::StatusOr<std::string> data = Base64(expect.at("data"));
  if (!data.ok()) return data.status();
  c->expect_data = *std::move(data);
  if (!expect.at("shares_memory").is_null()) {
    c->expect_shares_memory = expect.at("shares_memory").get<bool>();
  }
  c->expect_requires_grad = expect.value("requires_grad", false);
  c->expect_warning = expect.contains("warnings") && !expect.at("warnings").empty();
  return absl::OkStatus();
}

// Bit-exact equality where any NaN equals any NaN.
template <typename F>
bool ComponentsMatch(const char* a, const char* b, size_t n) {
  for (size_t i = 0; i < n; i += sizeof(F)) {
    F x, y;
    std::memcpy(&x, a + i, sizeof(F));
    std::memcpy(&y, b + i, sizeof(F));
    if (std::isnan(x) && std::isnan(y)) continue;
    if (std::memcmp(a + i, b + i, sizeof(F)) != 0) return false;
  }
  return true;
}

bool HalfMatch(const char* a, const char* b, size_t n, bool bfloat) {
  for (size_t i = 0; i < n; i += 2) {
    uint16_t x, y;
    std::memcpy(&x, a + i, 2);
    std::memcpy(&y, b + i, 2);
    auto is_nan = [bfloat](uint16_t v) {
      return bfloat ? (v & 0x7FFF) > 0x7F80 : (v & 0x7FFF) > 0x7C00;
    };
    if (x != y && !(is_nan(x) && is_nan(y))) return false;
  }
  return true;
}

bool DataMatches(DType dtype, const std::string& got, const std::string& want) {
  if (got.size() != want.size()) return false;
  switch (dtype) {
    case DType::kFloat16:
      return HalfMatch(got.data(), want.data(), got.size(), false);
    case DType::kBFloat16:
      return HalfMatch(got.data(), want.data(), got.size(), true);
    case DType::kFloat32:
    case DType::kComplex64:
      return ComponentsMatch<float>(got.data(), want.data(), got.size());
    case DType::kFloat64:
    case DType::kComplex128:
      return ComponentsMatch<double>(got.data(), want.data(), got.size());
    default:
      return got == want;
  }
}

}  // namespace

absl::StatusOr<std::vector<ConformanceCase>> LoadCases(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<ConformanceCase> cases;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    ConformanceCase c;
    absl::Status s;
    try {  // nlohmann reports schema mismatches by exception; keep them here
      s = ParseCase(line, &c);
    } catch (const std::exception& e) {
      s = absl::InvalidArgumentError(e.what());
    }
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", number, ": ", s.message()));
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

std::string Judge(const ConformanceCase& c, const Outcome& outcome, bool inline_transport) {
  std::optional<absl::StatusCode> want_error = c.expect_error;
  if (inline_transport && c.is_array && !want_error && c.options.copy == false) {
    want_error = absl::StatusCode::kFailedPrecondition;
  }
  if (want_error) {
    if (outcome.status.code() != *want_error) {
      return absl::StrCat("expected ", absl::StatusCodeToString(*want_error),
                          " (torch: ", c.torch_message, "), got ", outcome.status.ToString());
    }
    if (outcome.status.message().empty()) return "error without a message";
    return "";
  }
  if (!outcome.status.ok()) return absl::StrCat("unexpected error ", outcome.status.ToString());
  std::string diff;
  if (outcome.dtype != c.expect_dtype) {
    absl::StrAppend(&diff, " dtype ", DTypeName(outcome.dtype), " != ", DTypeName(c.expect_dtype),
                    ";");
  }
  if (outcome.shape != c.expect_shape) {
    absl::StrAppend(&diff, " shape ", DimsToString(outcome.shape),
                    " != ", DimsToString(c.expect_shape), ";");
  }
  if (outcome.strides != c.expect_strides) {
    absl::StrAppend(&diff, " strides ", DimsToString(outcome.strides),
                    " != ", DimsToString(c.expect_strides), ";");
  }
  if (outcome.requires_grad != c.expect_requires_grad) absl::StrAppend(&diff, " requires_grad;");
  const std::optional<bool> want_shares =
      inline_transport ? std::optional<bool>(false) : c.expect_shares_memory;
  if (want_shares.has_value() && outcome.shares_memory != *want_shares) {
    absl::StrAppend(&diff, " shares_memory ", outcome.shares_memory, " != ", *want_shares, ";");
  }
  if (c.expect_warning && outcome.warnings.empty()) absl::StrAppend(&diff, " missing warning;");
  if (!DataMatches(c.expect_dtype, outcome.data, c.expect_data)) {
    absl::StrAppend(&diff, " data differs (", outcome.data.size(), " bytes vs ",
                    c.expect_data.size(), ": got ",
                    absl::BytesToHexString(outcome.data.substr(0, 32)), " want ",
                    absl::BytesToHexString(c.expect_data.substr(0, 32)), ");");
  }
  return diff;
}

std::string GatherRowMajor(const void* base, DType dtype, const Layout& layout) {
  const int64_t numel = NumElements(layout.shape).value_or(0);
  std::string out(numel * ItemSize(dtype), '\0');
  Layout dense{layout.shape, ContiguousStrides(layout.shape), 0};
  absl::Status s = CastCopy({base, dtype, layout}, {out.data(), dtype, dense});
  if (!s.ok()) return "";
  return out;
}

std::string CasesPath(const std::string& fallback) {
  const char* env = std::getenv("ASARRAY_CONFORMANCE_CASES");
  return env != nullptr && *env != '\0' ? std::string(env) : fallback;
}

}  // namespace asarray::testing
