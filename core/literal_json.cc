#include "core/literal_json.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace asarray {
namespace {

using Json = nlohmann::json;

// Builds the Literal tree straight from parse events, so that integers too
// large for int64 keep their text instead of turning into doubles.
class LiteralBuilder : public nlohmann::json_sax<Json> {
 public:
  bool null() override { return Leaf(Literal::Invalid("null")); }
  bool boolean(bool v) override { return Leaf(Literal::Bool(v)); }
  bool number_integer(number_integer_t v) override {
    return Leaf(Literal::Int(static_cast<int64_t>(v)));
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (v > static_cast<number_unsigned_t>(std::numeric_limits<int64_t>::max())) {
      return Leaf(BigInteger(std::to_string(v)));
    }
    return Leaf(Literal::Int(static_cast<int64_t>(v)));
  }
  bool number_float(number_float_t v, const string_t& text) override {
    if (text.find_first_of(".eE") == string_t::npos) return Leaf(BigInteger(text));
    return Leaf(Literal::Float(v));
  }
  bool string(string_t& s) override {
    if (s == "nan") return Leaf(Literal::Float(std::nan("")));
    if (s == "inf") return Leaf(Literal::Float(HUGE_VAL));
    if (s == "-inf") return Leaf(Literal::Float(-HUGE_VAL));
    return Leaf(Literal::Invalid(absl::StrCat("the string \"", absl::CHexEscape(s), "\"")));
  }
  bool binary(binary_t&) override { return Leaf(Literal::Invalid("binary data")); }

  bool start_array(std::size_t) override {
    if (list_depth_ >= kMaxRank) {
      error_ = absl::StrCat("literal nests lists deeper than the maximum rank ", kMaxRank);
      return false;
    }
    ++list_depth_;
    return Open(Frame::kArray);
  }
  bool end_array() override {
    --list_depth_;
    Frame frame = std::move(frames_.back());
    frames_.pop_back();
    return Leaf(Literal::List(std::move(frame.items)));
  }
  // An object is a complex number when it is exactly {"re": number, "im": number}.
  bool start_object(std::size_t) override { return Open(Frame::kObject); }
  bool key(string_t& k) override {
    frames_.back().keys.push_back(k);
    return true;
  }
  bool end_object() override {
    Frame frame = std::move(frames_.back());
    frames_.pop_back();
    return Leaf(ObjectToLiteral(frame));
  }

  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    error_ = absl::StrCat("literal is not valid JSON at byte ", position, ": ", e.what());
    return false;
  }

  const std::string& error() const { return error_; }
  Literal TakeResult() { return std::move(result_); }

 private:
  struct Frame {
    enum Kind { kArray, kObject } kind;
    std::vector<Literal> items;
    std::vector<std::string> keys;
  };

  static Literal BigInteger(const std::string& text) {
    return Literal::Invalid(absl::StrCat("the integer ", text, ", which int64 cannot hold"));
  }

  static bool IsReal(const Literal& l) {
    return l.kind() == Literal::Kind::kInt || l.kind() == Literal::Kind::kFloat;
  }

  static Literal ObjectToLiteral(const Frame& frame) {
    if (frame.keys.size() == 2 && frame.items.size() == 2) {
      const int re = frame.keys[0] == "re" ? 0 : (frame.keys[1] == "re" ? 1 : -1);
      if (re >= 0 && frame.keys[1 - re] == "im" && IsReal(frame.items[re]) &&
          IsReal(frame.items[1 - re])) {
        auto value = [](const Literal& l) {
          return l.kind() == Literal::Kind::kInt ? static_cast<double>(l.int_value())
                                                 : l.float_value();
        };
        return Literal::Complex(value(frame.items[re]), value(frame.items[1 - re]));
      }
    }
    return Literal::Invalid("an object that is not {\"re\": x, \"im\": y}");
  }

  bool Open(Frame::Kind kind) {
    // Objects only make complex leaves, or invalid ones; bound their nesting
    // as well, so that no input builds an unbounded stack of frames.
    if (frames_.size() > static_cast<size_t>(kMaxRank) + 1) {
      error_ = absl::StrCat("literal nests deeper than the maximum rank ", kMaxRank);
      return false;
    }
    frames_.push_back(Frame{kind, {}, {}});
    return true;
  }

  bool Leaf(Literal l) {
    if (frames_.empty()) {
      result_ = std::move(l);
    } else {
      frames_.back().items.push_back(std::move(l));
    }
    return true;
  }

  std::vector<Frame> frames_;
  int list_depth_ = 0;
  Literal result_;
  std::string error_;
};

}  // namespace

namespace {

absl::StatusOr<Literal> Parse(absl::string_view text, bool strict) {
  LiteralBuilder builder;
  const bool ok = Json::sax_parse(text.begin(), text.end(), &builder,
                                  nlohmann::detail::input_format_t::json, strict,
                                  /*ignore_comments=*/false);
  if (!ok) {
    return absl::InvalidArgumentError(builder.error().empty() ? "literal is not valid JSON"
                                                              : builder.error());
  }
  return builder.TakeResult();
}

}  // namespace

absl::StatusOr<Literal> ParseLiteralJson(absl::string_view text) {
  return Parse(text, /*strict=*/true);
}

absl::StatusOr<Literal> ParseLiteralJsonPrefix(absl::string_view text) {
  return Parse(text, /*strict=*/false);
}

}  // namespace asarray
