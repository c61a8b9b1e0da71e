#include "core/plan.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr Device kCpu{Device::Type::kCPU, 0};
constexpr Device kCuda0{Device::Type::kCUDA, 0};
constexpr Device kCuda3{Device::Type::kCUDA, 3};

// A 3x4 float32 host array at offset 2, transposed: dense but not contiguous.
Source HostSource(DType dtype = DType::kFloat32, Layout layout = {{3, 4}, {1, 3}, 2}) {
  return Source{SourceKind::kHostMemory, dtype, std::move(layout), kCpu};
}

ConvertOptions CopyOption(std::optional<bool> copy) {
  ConvertOptions options;
  options.copy = copy;
  return options;
}

const std::optional<bool> kAllCopyOptions[] = {std::nullopt, true, false};

std::string CopyName(std::optional<bool> copy) {
  return copy.has_value() ? (*copy ? "copy=True" : "copy=False") : "copy=None";
}

TEST(ParseDeviceTest, AcceptsCpuAndCuda) {
  EXPECT_EQ(ParseDevice("cpu").value(), kCpu);
  EXPECT_EQ(ParseDevice("cuda").value(), kCuda0);
  EXPECT_EQ(ParseDevice("cuda:0").value(), kCuda0);
  EXPECT_EQ(ParseDevice("cuda:3").value(), kCuda3);
  EXPECT_EQ(ParseDevice("cuda:1023").value(), (Device{Device::Type::kCUDA, 1023}));
}

TEST(ParseDeviceTest, RejectsOtherText) {
  for (const char* text : {"cuda:", "cuda:-1", "gpu", "cuda:1x", "cuda:+1", "cuda:1024",
                           "cuda:99999999999", "CPU", "cuda 1", "", " cpu"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<Device> device = ParseDevice(text);
    ASSERT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(device.status().message(), HasSubstr("unknown device"));
  }
  EXPECT_THAT(ParseDevice("gpu").status().message(), HasSubstr("'gpu'"));
}

TEST(DeviceNameTest, RoundTrips) {
  EXPECT_EQ(DeviceName(kCpu), "cpu");
  EXPECT_EQ(DeviceName(kCuda0), "cuda:0");
  EXPECT_EQ(DeviceName(kCuda3), "cuda:3");
  for (const Device& d : {kCpu, kCuda0, kCuda3}) EXPECT_EQ(ParseDevice(DeviceName(d)).value(), d);
}

TEST(PlanConversionTest, AliasesWhenNothingChanges) {
  const Source source = HostSource();
  for (std::optional<bool> copy : {std::optional<bool>(), std::optional<bool>(false)}) {
    SCOPED_TRACE(CopyName(copy));
    ConvertOptions options = CopyOption(copy);
    // Naming the source's own dtype and device changes nothing.
    options.dtype = DType::kFloat32;
    options.device = kCpu;
    absl::StatusOr<Plan> plan = PlanConversion(source, options);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->action, Plan::Action::kAlias);
    EXPECT_EQ(plan->layout, source.layout);
    EXPECT_EQ(plan->dtype, DType::kFloat32);
    EXPECT_EQ(plan->device, kCpu);
    EXPECT_TRUE(plan->shares_memory);
    EXPECT_FALSE(plan->requires_grad);
    EXPECT_THAT(plan->warnings, IsEmpty());
  }
}

TEST(PlanConversionTest, AliasesDeviceMemory) {
  const Source source{SourceKind::kDeviceMemory, DType::kInt16, {{5}, {2}, 1}, kCuda3};
  absl::StatusOr<Plan> plan = PlanConversion(source, CopyOption(false));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->action, Plan::Action::kAlias);
  EXPECT_EQ(plan->device, kCuda3);
  EXPECT_EQ(plan->layout, source.layout);
  EXPECT_TRUE(plan->shares_memory);
}

TEST(PlanConversionTest, CopyTrueAlwaysCopies) {
  for (SourceKind kind :
       {SourceKind::kHostMemory, SourceKind::kInline, SourceKind::kDeviceMemory}) {
    Source source = HostSource();
    source.kind = kind;
    absl::StatusOr<Plan> plan = PlanConversion(source, CopyOption(true));
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->action, Plan::Action::kCopy);
    EXPECT_EQ(plan->dtype, DType::kFloat32);
    // A dense source keeps its strides; the copy starts at offset 0.
    EXPECT_EQ(plan->layout, (Layout{{3, 4}, {1, 3}, 0}));
    EXPECT_FALSE(plan->shares_memory);
  }
}

TEST(PlanConversionTest, DTypeChange) {
  ConvertOptions options;
  options.dtype = DType::kFloat64;
  absl::StatusOr<Plan> plan = PlanConversion(HostSource(), options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->action, Plan::Action::kCopy);
  EXPECT_EQ(plan->dtype, DType::kFloat64);
  EXPECT_EQ(plan->layout, (Layout{{3, 4}, {1, 3}, 0}));
  EXPECT_FALSE(plan->shares_memory);

  options.copy = false;
  absl::StatusOr<Plan> refused = PlanConversion(HostSource(), options);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("copy=False"));
  EXPECT_THAT(refused.status().message(), HasSubstr("dtype float32"));
  EXPECT_THAT(refused.status().message(), HasSubstr("float64"));
}

TEST(PlanConversionTest, DeviceChange) {
  ConvertOptions options;
  options.device = kCuda3;
  absl::StatusOr<Plan> plan = PlanConversion(HostSource(), options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->action, Plan::Action::kCopy);
  EXPECT_EQ(plan->device, kCuda3);
  EXPECT_EQ(plan->dtype, DType::kFloat32);
  EXPECT_FALSE(plan->shares_memory);

  options.copy = false;
  absl::StatusOr<Plan> refused = PlanConversion(HostSource(), options);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("cpu"));
  EXPECT_THAT(refused.status().message(), HasSubstr("cuda:3"));
}

TEST(PlanConversionTest, DeviceSourceToCpu) {
  const Source source{SourceKind::kDeviceMemory, DType::kFloat32, {{4}, {1}, 0}, kCuda0};
  ConvertOptions options;
  options.device = kCpu;
  absl::StatusOr<Plan> plan = PlanConversion(source, options);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->action, Plan::Action::kCopy);
  EXPECT_EQ(plan->device, kCpu);
}

TEST(PlanConversionTest, InlineSource) {
  Source source = HostSource();
  source.kind = SourceKind::kInline;

  absl::StatusOr<Plan> refused = PlanConversion(source, CopyOption(false));
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("inline"));

  // The bytes already are a private copy: nothing more to do, nothing shared.
  absl::StatusOr<Plan> plan = PlanConversion(source, CopyOption(std::nullopt));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->action, Plan::Action::kAlias);
  EXPECT_EQ(plan->layout, source.layout);
  EXPECT_FALSE(plan->shares_memory);

  ConvertOptions cast;
  cast.dtype = DType::kInt32;
  plan = PlanConversion(source, cast);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->action, Plan::Action::kCopy);
  EXPECT_FALSE(plan->shares_memory);
}

TEST(PlanConversionTest, InlineRefusalWinsOverOtherReasons) {
  Source source = HostSource(DType::kFloat32, {{4}, {-1}, 3});
  source.kind = SourceKind::kInline;
  ConvertOptions options = CopyOption(false);
  options.dtype = DType::kInt8;
  absl::StatusOr<Plan> refused = PlanConversion(source, options);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("inline"));
}

TEST(PlanConversionTest, NegativeStrides) {
  const struct {
    Layout source;
    Dims copy_strides;
  } kCases[] = {
      {{{3, 4}, {-4, -1}, 11}, {4, 1}},
      {{{4, 3}, {1, -4}, 8}, {1, 4}},    // |strides| are dense: kept
      {{{3, 4}, {-8, -2}, 22}, {4, 1}},  // |strides| leave gaps: dense copy
      {{{5}, {-1}, 4}, {1}},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(DimsToString(c.source.strides));
    const Source source = HostSource(DType::kFloat32, c.source);

    absl::StatusOr<Plan> refused = PlanConversion(source, CopyOption(false));
    ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(refused.status().message(), HasSubstr("negative strides"));

    absl::StatusOr<Plan> plan = PlanConversion(source, CopyOption(std::nullopt));
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->action, Plan::Action::kCopy);
    EXPECT_EQ(plan->layout, (Layout{c.source.shape, c.copy_strides, 0}));
    EXPECT_FALSE(plan->shares_memory);
  }
}

TEST(PlanConversionTest, CopyLayoutFollowsCopyStrides) {
  // torch 1.13: torch.empty(1000).as_strided(shape, strides).clone().stride().
  const struct {
    Layout source;
    Dims torch_clone_strides;
  } kCases[] = {
      {{{3, 4}, {1, 3}, 5}, {1, 3}},
      {{{2, 3, 4}, {12, 1, 3}, 1}, {12, 1, 3}},
      {{{3, 4}, {0, 1}, 2}, {4, 1}},
      {{{4, 4}, {2, 2}, 0}, {4, 1}},
      {{{2, 3}, {4, 4}, 0}, {1, 2}},
      {{{4, 3, 2}, {0, 1, 0}, 9}, {6, 2, 1}},
      {{{2, 1, 3}, {0, 5, 2}, 0}, {3, 3, 1}},
      {{{3, 1, 4}, {8, 100, 2}, 3}, {4, 12, 1}},
      {{{}, {}, 7}, {}},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(DimsToString(c.source.shape) + DimsToString(c.source.strides));
    absl::StatusOr<Plan> plan =
        PlanConversion(HostSource(DType::kInt64, c.source), CopyOption(true));
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->layout, (Layout{c.source.shape, c.torch_clone_strides, 0}));
    EXPECT_EQ(plan->layout.strides, CopyStrides(c.source.shape, c.source.strides));
  }
}

TEST(PlanConversionTest, RequiresGrad) {
  const struct {
    DType source;
    std::optional<DType> requested;
    bool allowed;
  } kCases[] = {
      {DType::kFloat32, std::nullopt, true},   {DType::kFloat16, std::nullopt, true},
      {DType::kBFloat16, std::nullopt, true},  {DType::kComplex128, std::nullopt, true},
      {DType::kInt64, std::nullopt, false},    {DType::kBool, std::nullopt, false},
      {DType::kUInt8, std::nullopt, false},    {DType::kInt64, DType::kFloat64, true},
      {DType::kFloat32, DType::kInt32, false},
  };
  for (const auto& c : kCases) {
    for (std::optional<bool> copy : kAllCopyOptions) {
      if (copy == false && c.requested.has_value()) continue;  // refused for the cast
      SCOPED_TRACE(testing::Message()
                   << DTypeName(c.source) << " as " << DTypeName(c.requested.value_or(c.source))
                   << ", " << CopyName(copy));
      ConvertOptions options = CopyOption(copy);
      options.dtype = c.requested;
      options.requires_grad = true;
      absl::StatusOr<Plan> plan = PlanConversion(HostSource(c.source), options);
      if (c.allowed) {
        ASSERT_TRUE(plan.ok()) << plan.status();
        EXPECT_TRUE(plan->requires_grad);
      } else {
        ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_THAT(plan.status().message(), HasSubstr("requires_grad"));
      }
    }
  }
}

TEST(PlanConversionTest, CopyFalseRefusalWinsOverRequiresGrad) {
  ConvertOptions options = CopyOption(false);
  options.dtype = DType::kInt64;
  options.requires_grad = true;
  absl::StatusOr<Plan> plan = PlanConversion(HostSource(DType::kInt32), options);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(plan.status().message(), Not(HasSubstr("requires_grad")));
}

TEST(PlanConversionTest, WarnsWhenDiscardingImaginaryParts) {
  const struct {
    DType from, to;
    bool warns;
  } kCases[] = {
      {DType::kComplex64, DType::kFloat32, true},     {DType::kComplex128, DType::kFloat16, true},
      {DType::kComplex64, DType::kInt64, true},       {DType::kComplex64, DType::kBool, false},
      {DType::kComplex64, DType::kComplex128, false}, {DType::kFloat64, DType::kFloat32, false},
      {DType::kComplex64, DType::kComplex64, false},  // an alias: no cast at all
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(testing::Message() << DTypeName(c.from) << " -> " << DTypeName(c.to));
    ConvertOptions options;
    options.dtype = c.to;
    absl::StatusOr<Plan> plan = PlanConversion(HostSource(c.from), options);
    ASSERT_TRUE(plan.ok()) << plan.status();
    if (c.warns) {
      ASSERT_EQ(plan->warnings.size(), 1u);
      EXPECT_THAT(plan->warnings[0], HasSubstr("imaginary"));
    } else {
      EXPECT_THAT(plan->warnings, IsEmpty());
    }
  }
}

TEST(PlanConversionTest, RejectsInvalidLayouts) {
  for (const Layout& layout : {Layout{{3, 4}, {1}, 0}, Layout{{3}, {1}, -1}, Layout{{-3}, {1}, 0},
                               Layout{{3}, {INT64_MAX}, 0}}) {
    SCOPED_TRACE(DimsToString(layout.shape) + DimsToString(layout.strides));
    for (std::optional<bool> copy : kAllCopyOptions) {
      ConvertOptions options = CopyOption(copy);
      options.dtype = DType::kInt8;  // a layout error comes before copy=False
      EXPECT_EQ(PlanConversion(HostSource(DType::kFloat32, layout), options).status().code(),
                absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(PlanConversionTest, RejectsLiteralSources) {
  Source source = HostSource();
  source.kind = SourceKind::kLiteral;
  absl::StatusOr<Plan> plan = PlanConversion(source, ConvertOptions{});
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("PlanLiteral"));
}

Literal L(std::vector<Literal> items) { return Literal::List(std::move(items)); }
Literal I(int64_t v) { return Literal::Int(v); }

TEST(PlanLiteralTest, PlansAContiguousCopy) {
  for (std::optional<bool> copy : {std::optional<bool>(), std::optional<bool>(true)}) {
    SCOPED_TRACE(CopyName(copy));
    LiteralInfo info;
    absl::StatusOr<Plan> plan =
        PlanLiteral(L({L({I(1), I(2), I(3)}), L({I(4), I(5), I(6)})}), CopyOption(copy), &info);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->action, Plan::Action::kCopy);
    EXPECT_EQ(plan->dtype, DType::kInt64);
    EXPECT_EQ(plan->layout, (Layout{{2, 3}, {3, 1}, 0}));
    EXPECT_EQ(plan->device, kCpu);
    EXPECT_FALSE(plan->shares_memory);
    EXPECT_FALSE(plan->requires_grad);
    EXPECT_THAT(plan->warnings, IsEmpty());
    EXPECT_EQ(info.dtype, DType::kInt64);
    EXPECT_EQ(info.shape, (Dims{2, 3}));
  }
}

TEST(PlanLiteralTest, ScalarAndEmptyShapes) {
  LiteralInfo info;
  absl::StatusOr<Plan> plan = PlanLiteral(Literal::Float(2.5), ConvertOptions{}, &info);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->dtype, DType::kFloat32);
  EXPECT_EQ(plan->layout, (Layout{{}, {}, 0}));
  // torch.tensor([[], []]).stride() is (1, 1).
  plan = PlanLiteral(L({L({}), L({})}), ConvertOptions{}, &info);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->layout, (Layout{{2, 0}, {1, 1}, 0}));
}

TEST(PlanLiteralTest, HonoursDTypeAndDevice) {
  ConvertOptions options;
  options.dtype = DType::kFloat16;
  options.device = kCuda3;
  LiteralInfo info;
  absl::StatusOr<Plan> plan = PlanLiteral(L({I(1), I(2)}), options, &info);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->dtype, DType::kFloat16);
  EXPECT_EQ(plan->device, kCuda3);
  EXPECT_EQ(info.dtype, DType::kFloat16);
}

TEST(PlanLiteralTest, CopyFalseFailsFirstEvenForMalformedLiterals) {
  const Literal kLiterals[] = {
      L({I(1), I(2)}), L({L({I(1), I(2)}), L({I(3)})}),  // ragged
      L({Literal::Invalid("null")}), L({I(300)}),        // overflows the requested int8
  };
  for (const Literal& literal : kLiterals) {
    ConvertOptions options = CopyOption(false);
    options.dtype = DType::kInt8;
    options.requires_grad = true;
    LiteralInfo info;
    absl::StatusOr<Plan> plan = PlanLiteral(literal, options, &info);
    ASSERT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(plan.status().message(), HasSubstr("copy=False"));
  }
}

TEST(PlanLiteralTest, AnalysisAndValueErrors) {
  LiteralInfo info;
  EXPECT_EQ(
      PlanLiteral(L({I(1), Literal::Invalid("null")}), ConvertOptions{}, &info).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanLiteral(L({L({I(1), I(2)}), L({I(3)})}), ConvertOptions{}, &info).status().code(),
            absl::StatusCode::kInvalidArgument);
  ConvertOptions int8;
  int8.dtype = DType::kInt8;
  EXPECT_EQ(PlanLiteral(L({I(300)}), int8, &info).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PlanLiteralTest, RequiresGrad) {
  ConvertOptions options;
  options.requires_grad = true;
  LiteralInfo info;
  absl::StatusOr<Plan> ints = PlanLiteral(L({I(1), I(2)}), options, &info);
  ASSERT_EQ(ints.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ints.status().message(), HasSubstr("requires_grad"));

  absl::StatusOr<Plan> floats = PlanLiteral(L({Literal::Float(1), I(2)}), options, &info);
  ASSERT_TRUE(floats.ok()) << floats.status();
  EXPECT_TRUE(floats->requires_grad);

  options.dtype = DType::kComplex64;
  absl::StatusOr<Plan> cast = PlanLiteral(L({I(1), I(2)}), options, &info);
  ASSERT_TRUE(cast.ok()) << cast.status();
  EXPECT_TRUE(cast->requires_grad);
}

TEST(PlanLiteralTest, ValueErrorsComeBeforeRequiresGrad) {
  // torch: torch.tensor([300], dtype=torch.int8, requires_grad=True) reports
  // the overflow.
  ConvertOptions options;
  options.dtype = DType::kInt8;
  options.requires_grad = true;
  LiteralInfo info;
  absl::StatusOr<Plan> plan = PlanLiteral(L({I(1), I(300)}), options, &info);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("overflow"));
  EXPECT_THAT(plan.status().message(), Not(HasSubstr("requires_grad")));

  plan = PlanLiteral(L({L({I(1), I(2)}), L({I(3)})}), options, &info);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("ragged"));
}

}  // namespace
}  // namespace asarray
