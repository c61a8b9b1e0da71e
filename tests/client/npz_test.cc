#include "client/npz.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

// The numpy helper script, set by CMake.
#ifndef ASARRAY_NPZ_NUMPY
#error "ASARRAY_NPZ_NUMPY must name tests/client/npz_numpy.py"
#endif

namespace asarray {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using Json = nlohmann::json;

std::string Python() {
  const char* python = std::getenv("ASARRAY_TORCH_PYTHON");
  return python != nullptr && *python != '\0' ? python : "/usr/bin/python3";
}

bool HaveNumpy() {
  static const bool have =
      std::system(absl::StrCat("'", Python(), "' -c 'import numpy' >/dev/null 2>&1").c_str()) == 0;
  return have;
}

#define SKIP_WITHOUT_NUMPY()                                                        \
  if (!HaveNumpy())                                                                 \
  GTEST_SKIP() << Python() << " cannot import numpy, the reference for .npz files " \
               << "(scripts/deps.sh installs python3-numpy)"

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

Dims RowMajor(const Dims& shape) { return ContiguousStrides(shape); }
Dims ColumnMajor(const Dims& shape) {
  const Dims reversed(shape.rbegin(), shape.rend());
  const Dims strides = ContiguousStrides(reversed);
  return Dims(strides.rbegin(), strides.rend());
}

class NpzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "npz_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(absl::string_view name) const { return absl::StrCat(dir_, "/", name); }

  // Runs npz_numpy.py with `args`; true when it exits 0.
  bool Numpy(const std::string& args) const {
    return std::system(absl::StrCat("'", Python(), "' '", ASARRAY_NPZ_NUMPY, "' ", args).c_str()) ==
           0;
  }

  std::string dir_;
};

// Arrays of every dtype, in several shapes (0-d and empty among them), with
// bytes that differ from array to array. The vector holds their data.
std::vector<NpzArray> EveryDType(std::vector<std::string>* storage) {
  const Dims shapes[] = {{2, 3}, {}, {0, 4}, {5}};
  storage->clear();
  storage->reserve(kNumDTypes * 4);
  std::vector<NpzArray> arrays;
  for (int d = 0; d < kNumDTypes; ++d) {
    const DType dtype = AllDTypes()[d];
    for (size_t s = 0; s < 4; ++s) {
      NpzArray array;
      array.name = absl::StrCat(DTypeName(dtype), "_", s);
      array.dtype = dtype;
      array.shape = shapes[s];
      const int64_t numel = *NumElements(array.shape);
      std::string& data = storage->emplace_back(numel * ItemSize(dtype), '\0');
      for (size_t b = 0; b < data.size(); ++b) {
        data[b] = dtype == DType::kBool ? static_cast<char>((b + s) % 2)
                                        : static_cast<char>(b * 7 + d * 13 + s);
      }
      array.data = data;
      arrays.push_back(array);
    }
  }
  return arrays;
}

void ExpectSameArrays(const std::vector<NpzMember>& members, const std::vector<NpzArray>& arrays) {
  ASSERT_EQ(members.size(), arrays.size());
  for (size_t i = 0; i < arrays.size(); ++i) {
    SCOPED_TRACE(arrays[i].name);
    const NpzMember& m = members[i];
    EXPECT_EQ(m.name, arrays[i].name);
    EXPECT_EQ(m.header.dtype, arrays[i].dtype);
    EXPECT_EQ(m.header.layout.shape, arrays[i].shape);
    EXPECT_EQ(m.header.layout.strides, RowMajor(arrays[i].shape));
    EXPECT_EQ(m.data(), arrays[i].data);
    // A version 1.0 .npy, its data on a 64-byte boundary.
    EXPECT_THAT(m.npy, StartsWith(std::string("\x93NUMPY\x01\x00", 8)));
    EXPECT_EQ(m.header.data_offset % 64, 0u);
  }
}

TEST_F(NpzTest, WriteThenReadRoundTripsEveryDType) {
  std::vector<std::string> storage;
  const std::vector<NpzArray> arrays = EveryDType(&storage);
  const std::string path = Path("all.npz");
  ASSERT_TRUE(WriteNpz(path, arrays).ok());
  // Only the archive is left: the file it was written to was renamed.
  EXPECT_THAT(Listing(dir_), ElementsAre("all.npz"));
  absl::StatusOr<std::vector<NpzMember>> members = ReadNpz(path);
  ASSERT_TRUE(members.ok()) << members.status();
  ExpectSameArrays(*members, arrays);
  members = ReadNpzBytes(ReadFile(path));
  ASSERT_TRUE(members.ok()) << members.status();
  ExpectSameArrays(*members, arrays);
}

TEST_F(NpzTest, WriteReplacesAnExistingFile) {
  const std::string path = Path("out.npz");
  const std::string a = "abcdefgh", b = "12345678";
  ASSERT_TRUE(WriteNpz(path, {{"a", DType::kInt64, {1}, a}}).ok());
  ASSERT_TRUE(WriteNpz(path, {{"b", DType::kFloat32, {2}, b}}).ok());
  const absl::StatusOr<std::vector<NpzMember>> members = ReadNpz(path);
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), 1u);
  EXPECT_EQ((*members)[0].name, "b");
  EXPECT_EQ((*members)[0].data(), b);
  EXPECT_THAT(Listing(dir_), ElementsAre("out.npz"));
}

TEST_F(NpzTest, NumpyLoadsWhatWriteNpzWrote) {
  SKIP_WITHOUT_NUMPY();
  std::vector<std::string> storage;
  std::vector<NpzArray> arrays = EveryDType(&storage);
  const std::string fortran_data(6 * 8, '\x05');
  arrays.push_back({"dir/key", DType::kFloat64, {3, 2}, fortran_data});
  Json manifest = Json::object();
  for (const NpzArray& a : arrays) {
    manifest[a.name] = {{"dtype", std::string(DTypeName(a.dtype))},
                        {"shape", a.shape},
                        {"fortran", false},
                        {"hex", absl::BytesToHexString(a.data)}};
  }
  std::ofstream(Path("manifest.json")) << manifest.dump();
  ASSERT_TRUE(WriteNpz(Path("out.npz"), arrays).ok());
  EXPECT_TRUE(Numpy(absl::StrCat("check '", Path("out.npz"), "' '", Path("manifest.json"), "'")));
}

// Reads what np.savez / np.savez_compressed wrote, and compares it with the
// manifest the script wrote beside it.
void ExpectNumpyArchive(const std::string& path, const Json& manifest) {
  SCOPED_TRACE(path);
  const absl::StatusOr<std::vector<NpzMember>> members = ReadNpz(path);
  ASSERT_TRUE(members.ok()) << members.status();
  ASSERT_EQ(members->size(), manifest.size());
  std::map<std::string, const NpzMember*> by_name;
  for (const NpzMember& m : *members) by_name[m.name] = &m;
  for (const auto& [name, want] : manifest.items()) {
    SCOPED_TRACE(name);
    ASSERT_EQ(by_name.count(name), 1u);
    const NpzMember& m = *by_name[name];
    const absl::StatusOr<DType> dtype = ParseDType(want["dtype"].get<std::string>());
    ASSERT_TRUE(dtype.ok()) << dtype.status();
    EXPECT_EQ(m.header.dtype, *dtype);
    const Dims shape = want["shape"].get<Dims>();
    EXPECT_EQ(m.header.layout.shape, shape);
    EXPECT_EQ(m.header.layout.strides,
              want["fortran"].get<bool>() ? ColumnMajor(shape) : RowMajor(shape));
    EXPECT_EQ(absl::BytesToHexString(m.data()), want["hex"].get<std::string>());
  }
}

TEST_F(NpzTest, ReadsNumpySavezAndSavezCompressed) {
  SKIP_WITHOUT_NUMPY();
  ASSERT_TRUE(Numpy(absl::StrCat("write '", dir_, "'")));
  const Json manifest = Json::parse(ReadFile(Path("manifest.json")));
  // The script covers what the test claims to.
  for (const char* key : {"scalar", "empty", "fortran", "flags", "c64", "c128", "dir/key"}) {
    EXPECT_TRUE(manifest.contains(key)) << key;
  }
  EXPECT_TRUE(manifest["fortran"]["fortran"].get<bool>());
  EXPECT_TRUE(manifest["scalar"]["shape"].empty());
  ExpectNumpyArchive(Path("stored.npz"), manifest);
  ExpectNumpyArchive(Path("deflated.npz"), manifest);
}

TEST_F(NpzTest, RefusesBrokenArchivesNamingTheMember) {
  SKIP_WITHOUT_NUMPY();
  ASSERT_TRUE(Numpy(absl::StrCat("bad '", dir_, "'")));
  NpzLimits small;
  small.max_bytes = 1 << 16;
  struct Case {
    const char* file;
    NpzLimits limits;
    std::vector<std::string> words;  // the message holds each
  };
  const Case cases[] = {
      {"garbage.npz", {}, {"not a zip archive"}},
      {"empty.npz", {}, {"empty, not a zip archive"}},
      {"notnpy.npz", {}, {"member 'notes.txt' is not a .npy file"}},
      {"noname.npz", {}, {"member '.npy' has no key"}},
      {"badheader.npz", {}, {"member 'big.npy' is not a supported .npy file", "big-endian"}},
      {"truncated.npz", {}, {"member 'short.npy' is truncated", "declares 16 data bytes and 12"}},
      {"trailing.npz", {}, {"member 'long.npy' holds 8 bytes past the data"}},
      {"duplicate.npz", {}, {"member 'a.npy' appears twice"}},
      {"bzip2.npz", {}, {"member 'b.npy' is compressed by method 12"}},
      {"encrypted.npz", {}, {"member 'e.npy' is encrypted"}},
      {"bomb.npz", small, {"member 'zeros.npy' declares 1048704 bytes", "limit of 65536"}},
      {"ratio.npz", {}, {"member 'huge.npy' declares 4294967280 bytes", "zip bomb"}},
      {"more.npz", {}, {"member 'more.npy'", "more than the 1048688 bytes"}},
      {"less.npz", {}, {"member 'less.npy'", "1048720"}},
      {"storedsize.npz", {}, {"member 's.npy' is stored in 144 bytes but declares 1144"}},
      {"crc.npz", {}, {"member 'crc.npy' cannot be read", "CRC"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    const std::string path = Path(c.file);
    for (const bool from_bytes : {false, true}) {
      const absl::StatusOr<std::vector<NpzMember>> members =
          from_bytes ? ReadNpzBytes(ReadFile(path), c.limits) : ReadNpz(path, c.limits);
      EXPECT_EQ(members.status().code(), absl::StatusCode::kInvalidArgument) << members.status();
      const std::string message(members.status().message());
      // From a file the message begins with its path.
      EXPECT_THAT(message, StartsWith(from_bytes ? "" : absl::StrCat(path, ": ")));
      for (const std::string& word : c.words) EXPECT_THAT(message, HasSubstr(word));
    }
  }
  // Within the limits, the same zeros read.
  const absl::StatusOr<std::vector<NpzMember>> zeros = ReadNpz(Path("bomb.npz"));
  ASSERT_TRUE(zeros.ok()) << zeros.status();
  EXPECT_THAT((*zeros)[0].header.layout.shape, ElementsAre(1 << 20));
  NpzLimits few;
  few.max_members = 2;
  EXPECT_THAT(std::string(ReadNpz(Path("duplicate.npz"), few).status().message()),
              HasSubstr("holds 3 members, past the limit of 2"));
}

TEST_F(NpzTest, MissingFileIsNotFound) {
  const absl::StatusOr<std::vector<NpzMember>> members = ReadNpz(Path("absent.npz"));
  EXPECT_EQ(members.status().code(), absl::StatusCode::kNotFound) << members.status();
  EXPECT_THAT(std::string(members.status().message()), HasSubstr("absent.npz"));
}

TEST_F(NpzTest, WriteRefusesBadArraysAndLeavesTheOldFile) {
  const std::string path = Path("out.npz");
  const std::string eight = "abcdefgh";
  ASSERT_TRUE(WriteNpz(path, {{"old", DType::kInt32, {2}, eight}}).ok());
  const std::string before = ReadFile(path);
  struct Case {
    std::vector<NpzArray> arrays;
    std::string words;
  };
  const Case cases[] = {
      {{}, "no arrays"},
      {{{"", DType::kUInt8, {8}, eight}}, "array '' has no name"},
      {{{"a", DType::kUInt8, {8}, eight}, {"a", DType::kInt8, {8}, eight}},
       "array 'a' is named twice"},
      {{{std::string("n\0ul", 4), DType::kUInt8, {8}, eight}}, "has a NUL"},
      {{{"ok", DType::kUInt8, {8}, eight}, {"short", DType::kFloat32, {3}, eight}},
       "array 'short' has 8 bytes of data, not the 12 its shape [3] of float32 takes"},
      {{{"neg", DType::kUInt8, {-1}, eight}}, "array 'neg'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.words);
    const absl::Status status = WriteNpz(path, c.arrays);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), AllOf(HasSubstr(path), HasSubstr(c.words)));
  }
  EXPECT_EQ(ReadFile(path), before);
  // A directory that does not exist: nothing is written anywhere.
  const absl::Status status = WriteNpz(Path("no/such/dir.npz"), {{"a", DType::kUInt8, {8}, eight}});
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_THAT(Listing(dir_), ElementsAre("out.npz"));
}

}  // namespace
}  // namespace asarray
