#include "core/literal.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/dtype_dispatch.h"
#include "core/element_convert.h"

namespace asarray {

Literal Literal::Bool(bool v) {
  Literal l;
  l.kind_ = Kind::kBool;
  l.int_ = v ? 1 : 0;
  return l;
}
Literal Literal::Int(int64_t v) {
  Literal l;
  l.kind_ = Kind::kInt;
  l.int_ = v;
  return l;
}
Literal Literal::Float(double v) {
  Literal l;
  l.kind_ = Kind::kFloat;
  l.re_ = v;
  return l;
}
Literal Literal::Complex(double re, double im) {
  Literal l;
  l.kind_ = Kind::kComplex;
  l.re_ = re;
  l.im_ = im;
  return l;
}
Literal Literal::List(std::vector<Literal> items) {
  Literal l;
  l.kind_ = Kind::kList;
  l.items_ = std::move(items);
  return l;
}
Literal Literal::Invalid(std::string what) {
  Literal l;
  l.kind_ = Kind::kInvalid;
  l.invalid_ = std::move(what);
  return l;
}

namespace {

using Kind = Literal::Kind;

// The index of an element, for messages: "[1, 0]", or "the top level".
std::string Where(const std::vector<int64_t>& path) {
  if (path.empty()) return "at the top level";
  return absl::StrCat("at index ", DimsToString(path));
}

absl::Status NotANumber(const Literal& l, const std::vector<int64_t>& path) {
  return absl::InvalidArgumentError(
      absl::StrCat("literal holds ", l.invalid_description(), " ", Where(path),
                   "; only bool, integer, float and complex values can be converted"));
}

absl::Status TooDeep() {
  return absl::InvalidArgumentError(
      absl::StrCat("literal nests lists deeper than the maximum rank ", kMaxRank));
}

// Rank in the bool < int64 < float32 < complex64 promotion lattice.
int PromotionRank(DType d) {
  switch (d) {
    case DType::kBool:
      return 0;
    case DType::kInt64:
      return 1;
    case DType::kFloat32:
      return 2;
    default:
      return 3;
  }
}

absl::StatusOr<DType> InferDType(const Literal& l, int depth, std::vector<int64_t>& path) {
  switch (l.kind()) {
    case Kind::kBool:
      return DType::kBool;
    case Kind::kInt:
      return DType::kInt64;
    case Kind::kFloat:
      return DType::kFloat32;
    case Kind::kComplex:
      return DType::kComplex64;
    case Kind::kInvalid:
      return NotANumber(l, path);
    case Kind::kList:
      break;
  }
  if (depth >= kMaxRank) return TooDeep();
  if (l.items().empty()) return DType::kFloat32;
  DType result = DType::kBool;
  path.push_back(0);
  for (const Literal& item : l.items()) {
    absl::StatusOr<DType> d = InferDType(item, depth + 1, path);
    if (!d.ok()) return d.status();
    if (PromotionRank(*d) > PromotionRank(result)) result = *d;
    ++path.back();
  }
  path.pop_back();
  return result;
}

// Whether an integer `v` fits T under torch's checked conversion.
template <typename T>
bool IntFits(int64_t v) {
  constexpr int64_t kMax = static_cast<int64_t>(std::numeric_limits<T>::max());
  if constexpr (std::is_unsigned<T>::value) {
    return v <= kMax && v >= -kMax;  // negatives wrap, down to -max
  } else {
    return v >= static_cast<int64_t>(std::numeric_limits<T>::min()) && v <= kMax;
  }
}

// Whether a float `v` fits T: finite and within [lowest, max]. int64's max is
// not a double; 2^63 is the first value beyond it.
template <typename T>
bool FloatFits(double v) {
  if (!std::isfinite(v)) return false;
  constexpr double kMin = static_cast<double>(std::numeric_limits<T>::min());
  if constexpr (std::is_same<T, int64_t>::value) {
    return v >= kMin && v < 9223372036854775808.0;
  } else {
    return v >= kMin && v <= static_cast<double>(std::numeric_limits<T>::max());
  }
}

absl::Status Overflow(const std::string& value, DType dtype, const std::vector<int64_t>& path) {
  return absl::InvalidArgumentError(absl::StrCat("value ", value, " ", Where(path),
                                                 " cannot be converted to ", DTypeName(dtype),
                                                 " without overflow"));
}

// One leaf into T. `out` may be null (validation only).
template <typename T>
absl::Status StoreScalar(const Literal& l, DType dtype, const std::vector<int64_t>& path, T* out) {
  T value{};
  switch (l.kind()) {
    case Kind::kInvalid:
      return NotANumber(l, path);
    case Kind::kList:
      return absl::InvalidArgumentError(
          absl::StrCat("literal has a list ", Where(path),
                       " where a number belongs: nested lists must all be equally deep"));
    case Kind::kComplex:
      if constexpr (std::is_same<T, Bool8>::value) {
        value = Convert<T>(Complex128{l.float_value(), l.imag_value()});
      } else if constexpr (std::is_same<T, Complex64>::value ||
                           std::is_same<T, Complex128>::value) {
        value = Convert<T>(Complex128{l.float_value(), l.imag_value()});
      } else {
        return absl::InvalidArgumentError(absl::StrCat("complex value ", Where(path),
                                                       " cannot be stored in the real dtype ",
                                                       DTypeName(dtype)));
      }
      break;
    case Kind::kBool:
    case Kind::kInt:
      if constexpr (std::is_integral<T>::value) {
        if (!IntFits<T>(l.int_value())) return Overflow(absl::StrCat(l.int_value()), dtype, path);
        value = static_cast<T>(l.int_value());
      } else if constexpr (std::is_same<T, Bool8>::value) {
        value = Bool8{static_cast<uint8_t>(l.int_value() != 0)};
      } else {
        // torch reads a Python int as a double on its way into a float dtype.
        value = Convert<T>(static_cast<double>(l.int_value()));
      }
      break;
    case Kind::kFloat:
      if constexpr (std::is_integral<T>::value) {
        if (!FloatFits<T>(l.float_value())) {
          return Overflow(absl::StrCat(l.float_value()), dtype, path);
        }
        value = static_cast<T>(l.float_value());
      } else {
        value = Convert<T>(l.float_value());
      }
      break;
  }
  if (out != nullptr) *out = value;
  return absl::OkStatus();
}

template <typename T>
class Storer {
 public:
  Storer(const LiteralInfo& info, T* out) : info_(info), out_(out) {}

  absl::Status Store(const Literal& l, size_t dim) {
    if (dim == info_.shape.size()) {
      absl::Status s = StoreScalar<T>(l, info_.dtype, path_, out_);
      if (out_ != nullptr) ++out_;
      return s;
    }
    if (l.kind() != Kind::kList) {
      if (l.kind() == Kind::kInvalid) return NotANumber(l, path_);
      return absl::InvalidArgumentError(
          absl::StrCat("literal has a number ", Where(path_), " where a list of length ",
                       info_.shape[dim], " belongs: nested lists must all be equally deep"));
    }
    const int64_t length = static_cast<int64_t>(l.items().size());
    if (length != info_.shape[dim]) {
      return absl::InvalidArgumentError(
          absl::StrCat("ragged literal: expected a list of length ", info_.shape[dim], " at dim ",
                       dim, " but the list ", Where(path_), " has length ", length));
    }
    path_.push_back(0);
    for (const Literal& item : l.items()) {
      absl::Status s = Store(item, dim + 1);
      if (!s.ok()) return s;
      ++path_.back();
    }
    path_.pop_back();
    return absl::OkStatus();
  }

 private:
  const LiteralInfo& info_;
  T* out_;
  std::vector<int64_t> path_;
};

}  // namespace

absl::StatusOr<LiteralInfo> AnalyzeLiteral(const Literal& literal, std::optional<DType> requested) {
  LiteralInfo info;
  if (requested.has_value()) {
    info.dtype = *requested;
  } else {
    std::vector<int64_t> path;
    absl::StatusOr<DType> inferred = InferDType(literal, 0, path);
    if (!inferred.ok()) return inferred.status();
    info.dtype = *inferred;
  }
  const Literal* node = &literal;
  while (node->kind() == Kind::kList) {
    if (info.shape.size() >= static_cast<size_t>(kMaxRank)) return TooDeep();
    info.shape.push_back(static_cast<int64_t>(node->items().size()));
    if (node->items().empty()) break;
    node = &node->items().front();
  }
  absl::StatusOr<ViewSizes> sizes =
      ComputeViewSizes(Layout{info.shape, ContiguousStrides(info.shape), 0}, ItemSize(info.dtype));
  if (!sizes.ok()) return sizes.status();
  return info;
}

absl::Status StoreLiteral(const Literal& literal, const LiteralInfo& info, void* dst) {
  return DispatchDType(info.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return Storer<T>(info, static_cast<T*>(dst)).Store(literal, 0);
  });
}

}  // namespace asarray
