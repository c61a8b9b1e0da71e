#include "core/literal_json.h"

#include <cmath>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

using ::testing::HasSubstr;

// A compact rendering of a literal tree: ints bare, floats with "f", bools
// as words, complex as "(re,im)" and invalid leaves as "invalid".
std::string Describe(const Literal& l) {
  switch (l.kind()) {
    case Literal::Kind::kBool:
      return l.bool_value() ? "true" : "false";
    case Literal::Kind::kInt:
      return absl::StrCat(l.int_value());
    case Literal::Kind::kFloat:
      return absl::StrCat(l.float_value(), "f");
    case Literal::Kind::kComplex:
      return absl::StrCat("(", l.float_value(), ",", l.imag_value(), ")");
    case Literal::Kind::kInvalid:
      return "invalid";
    case Literal::Kind::kList:
      return absl::StrCat(
          "[",
          absl::StrJoin(l.items(), ",",
                        [](std::string* out, const Literal& i) { out->append(Describe(i)); }),
          "]");
  }
  return "?";
}

std::string Parsed(const std::string& text) {
  absl::StatusOr<Literal> l = ParseLiteralJson(text);
  if (!l.ok()) return l.status().ToString();
  return Describe(*l);
}

std::string Nest(int depth, const std::string& inner) {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

TEST(ParseLiteralJsonTest, Numbers) {
  const struct {
    const char* text;
    const char* want;
  } kCases[] = {
      {"3", "3"},
      {"-3", "-3"},
      {"3.0", "3f"},
      {"3e0", "3f"},
      {"-2.5E-1", "-0.25f"},
      {"true", "true"},
      {"false", "false"},
      {"9223372036854775807", "9223372036854775807"},
      {"-9223372036854775808", "-9223372036854775808"},
      {"[1, 2.0, true]", "[1,2f,true]"},
      {" [ [1], [2] ] ", "[[1],[2]]"},
      {"[]", "[]"},
      {"[[], []]", "[[],[]]"},
      {"{\"re\": 1, \"im\": 2}", "(1,2)"},
      {"{\"im\": 2.5, \"re\": -1}", "(-1,2.5)"},
      {"[{\"re\": 0, \"im\": 0.5}, 1]", "[(0,0.5),1]"},
  };
  for (const auto& c : kCases) {
    EXPECT_EQ(Parsed(c.text), c.want) << c.text;
  }
}

TEST(ParseLiteralJsonTest, IntegersAndFloatsKeepTheirKinds) {
  EXPECT_EQ(ParseLiteralJson("3").value().kind(), Literal::Kind::kInt);
  EXPECT_EQ(ParseLiteralJson("3.0").value().kind(), Literal::Kind::kFloat);
  EXPECT_EQ(ParseLiteralJson("3e2").value().kind(), Literal::Kind::kFloat);
}

TEST(ParseLiteralJsonTest, NonFiniteStrings) {
  const Literal l = ParseLiteralJson("[\"nan\", \"inf\", \"-inf\"]").value();
  ASSERT_EQ(l.items().size(), 3u);
  for (const Literal& item : l.items()) EXPECT_EQ(item.kind(), Literal::Kind::kFloat);
  EXPECT_TRUE(std::isnan(l.items()[0].float_value()));
  EXPECT_EQ(l.items()[1].float_value(), HUGE_VAL);
  EXPECT_EQ(l.items()[2].float_value(), -HUGE_VAL);
}

TEST(ParseLiteralJsonTest, OtherValuesBecomeInvalidLeaves) {
  const struct {
    const char* text;
    const char* description;
  } kCases[] = {
      {"null", "null"},
      {"\"abc\"", "the string \"abc\""},
      {"\"NaN\"", "the string \"NaN\""},
      {"{}", "an object"},
      {"{\"re\": 1}", "an object"},
      {"{\"re\": 1, \"im\": \"x\"}", "an object"},
      {"{\"re\": true, \"im\": 1}", "an object"},
      {"{\"re\": 1, \"im\": 2, \"x\": 3}", "an object"},
      {"{\"a\": 1, \"b\": 2}", "an object"},
      {"18446744073709551615", "the integer 18446744073709551615"},
      {"18446744073709551616", "the integer 18446744073709551616"},
      {"-9223372036854775809", "the integer -9223372036854775809"},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.text);
    absl::StatusOr<Literal> l = ParseLiteralJson(c.text);
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_EQ(l->kind(), Literal::Kind::kInvalid);
    EXPECT_THAT(l->invalid_description(), HasSubstr(c.description));
  }
}

TEST(ParseLiteralJsonTest, InvalidLeavesFailAnalysis) {
  for (const char* text : {"[1, 18446744073709551616]", "[[1], [-9223372036854775809]]",
                           "[1, null]", "[\"a\"]", "[{\"x\": 1}]"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<Literal> l = ParseLiteralJson(text);
    ASSERT_TRUE(l.ok()) << l.status();
    EXPECT_EQ(AnalyzeLiteral(*l, std::nullopt).status().code(), absl::StatusCode::kInvalidArgument);
  }
  absl::Status s =
      AnalyzeLiteral(ParseLiteralJson("[1, 18446744073709551616]").value(), std::nullopt).status();
  EXPECT_THAT(s.message(), HasSubstr("18446744073709551616"));
  EXPECT_THAT(s.message(), HasSubstr("at index [1]"));
}

TEST(ParseLiteralJsonTest, RejectsMalformedJson) {
  for (const char* text :
       {"", "[1, 2", "[1,,2]", "abc", "[1] [2]", "{\"re\": 1,}", "[1, 2]]", "'a'", "[01]", "nan"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<Literal> l = ParseLiteralJson(text);
    ASSERT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(l.status().message(), HasSubstr("not valid JSON"));
  }
}

TEST(ParseLiteralJsonTest, AcceptsNestingUpToMaxRank) {
  EXPECT_TRUE(ParseLiteralJson(Nest(kMaxRank, "1")).ok());
  // A complex leaf is an object inside the deepest list, not another dim.
  EXPECT_TRUE(ParseLiteralJson(Nest(kMaxRank, "{\"re\": 1, \"im\": 2}")).ok());
}

TEST(ParseLiteralJsonTest, RejectsNestingDeeperThanMaxRank) {
  for (int depth : {kMaxRank + 1, kMaxRank + 2, 100000}) {
    SCOPED_TRACE(depth);
    absl::StatusOr<Literal> l = ParseLiteralJson(Nest(depth, "1"));
    EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(l.status().message(), HasSubstr("deeper than the maximum rank"));
  }
}

TEST(ParseLiteralJsonPrefixTest, IgnoresTrailingText) {
  absl::StatusOr<Literal> l = ParseLiteralJsonPrefix("[1, 2.5] and then some");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(Describe(*l), "[1,2.5f]");
  EXPECT_EQ(Describe(ParseLiteralJsonPrefix("7,{").value()), "7");
  EXPECT_EQ(Describe(ParseLiteralJsonPrefix("{\"re\":1,\"im\":0}}}").value()), "(1,0)");
  // The strict parser rejects the same text.
  EXPECT_EQ(ParseLiteralJson("[1, 2.5] and then some").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParseLiteralJsonPrefixTest, StillRejectsMalformedValues) {
  for (const char* text : {"", "[1, 2", "[1,,2] x", "}"}) {
    SCOPED_TRACE(text);
    EXPECT_EQ(ParseLiteralJsonPrefix(text).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(ParseLiteralJsonPrefix(Nest(kMaxRank + 2, "1") + " tail").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace asarray
