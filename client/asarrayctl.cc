// asarrayctl: the command line of asarrayd. `asarrayctl --help` and
// `asarrayctl help COMMAND` print the usage.
//
//   asarrayctl [--server ADDR] convert FILE.npy | --json LITERAL
//              [--via shm|inline|fd] [--dtype D] [--device DEV] [--copy true|false|none]
//              [--requires-grad] [--save OUT.npy]
//   asarrayctl [--server ADDR] convert (FILE.npy | FILE.npz)... [options as above]
//              [--save OUT.npz]
//   asarrayctl [--server ADDR] take ID [--dtype D] [--device DEV] [--copy ...] [--save OUT.npy]
//   asarrayctl [--server ADDR] read ID --save OUT.npy
//   asarrayctl [--server ADDR] release ID | list | stats | health
//
// On a TCP address, --tls_ca CA.pem connects with TLS (and --tls_cert with
// --tls_key presents a client certificate, for a server that requires one);
// ASARRAY_SERVER, ASARRAY_TLS_CA, ASARRAY_TLS_CERT and ASARRAY_TLS_KEY set
// them from the environment.
//
// Calls go over gRPC, except those of `convert --via fd` and `take` on a
// Unix address, which use the local transport: the file goes to the server in a memfd (--via
// fd), and a result's memory comes back as a descriptor; nothing is named in
// /dev/shm. Every handle holds a TTL lease, so that it outlives the command.
// Handles print as one JSON object per line. On failure it prints the gRPC
// code name and message on stderr and exits 1 (2 for a usage error).
//
// Several files, any .npz, or --save OUT.npz convert in one ConvertBatch
// call, all or nothing: the arrays of every .npz and each .npy, in the order
// given. Each result's line has a "key": its .npz key, or its .npy file's
// name less ".npy"; two arrays of the same key are refused. --save writes
// all the results as one .npz, under those keys.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "client/client.h"
#include "client/npy.h"
#include "client/npz.h"
#include "core/checked_math.h"
#include "core/literal_json.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace asarray {
namespace {

using Json = nlohmann::json;

// What the command line asks for. Options a command does not take stay unset.
struct Args {
  std::string command;  // the subcommand
  std::string server, tls_ca, tls_cert, tls_key;
  std::vector<std::string> files;  // convert's FILE.npy and FILE.npz
  std::string id;                  // take, read and release
  std::optional<std::string> json, via, dtype, device, copy, save;
  bool requires_grad = false;
};

// A usage error: a request this command line cannot mean. It exits 2, with
// the command's usage, where a failed call exits 1.
constexpr absl::string_view kUsagePayload = "asarrayctl/usage";

absl::Status Usage(absl::string_view why) {
  absl::Status status = absl::InvalidArgumentError(why);
  status.SetPayload(kUsagePayload, absl::Cord());
  return status;
}

bool IsUsage(const absl::Status& status) { return status.GetPayload(kUsagePayload).has_value(); }

// The grammar of the command line (CLI11), each command with its own help.
class CommandLine {
 public:
  CommandLine();
  CommandLine(const CommandLine&) = delete;
  CommandLine& operator=(const CommandLine&) = delete;

  // Parses argv into args(). True: a command to run. False: help was asked
  // for and printed. A usage error (IsUsage) otherwise.
  absl::StatusOr<bool> Parse(int argc, char** argv);
  const Args& args() const { return args_; }
  // The usage of the command that was named, or of asarrayctl.
  std::string Help() const;

 private:
  // --dtype, --device, --copy and --save, which convert and take share.
  void AddConversionOptions(CLI::App* command);
  // Binds an option to an unset-unless-given value.
  CLI::Option* AddOptional(CLI::App* command, const std::string& name,
                           std::optional<std::string>* value, const std::string& what);

  CLI::App app_;
  Args args_;
  std::string help_topic_;  // help CMD
};

CLI::Option* CommandLine::AddOptional(CLI::App* command, const std::string& name,
                                      std::optional<std::string>* value, const std::string& what) {
  return command->add_option_function<std::string>(
      name, [value](const std::string& v) { *value = v; }, what);
}

void CommandLine::AddConversionOptions(CLI::App* command) {
  AddOptional(command, "--dtype", &args_.dtype,
              "The result's dtype (float32, bfloat16, int64, bool, ...); default: the source's")
      ->type_name("D");
  AddOptional(command, "--device", &args_.device, "cpu, cuda or cuda:N; default: the source's")
      ->type_name("DEV");
  AddOptional(command, "--copy", &args_.copy,
              "true: always copy; false: never, and fail where a copy is needed; "
              "none (default): only when needed")
      ->check(CLI::IsMember({"true", "false", "none"}));
  AddOptional(command, "--save", &args_.save,
              "Also write the result's elements to OUT.npy (OUT.npz for several)")
      ->type_name("OUT");
}

CommandLine::CommandLine()
    : app_(
          "The command line of asarrayd: converts arrays as torch.asarray does and manages "
          "the handles the server holds. Each handle prints as one JSON object per line.",
          "asarrayctl") {
  app_.get_formatter()->label("Usage", "usage");
  app_.get_formatter()->column_width(34);
  app_.require_subcommand(1);
  app_.fallthrough();  // connection options may follow the command
  app_.footer(
      "A failed call prints its gRPC code and message on stderr and exits 1; a usage error "
      "exits 2.\nRun 'asarrayctl help COMMAND' or 'asarrayctl COMMAND --help' for a command's "
      "options.");
  // The connection: a flag, else the environment.
  const struct {
    const char* flag;
    std::string Args::*value;
    const char* variable;
    const char* type;
    const char* what;
  } kConnection[] = {
      {"--server", &Args::server, "ASARRAY_SERVER", "ADDR",
       "unix:/path or host:port; default: the default socket of asarrayd"},
      {"--tls_ca", &Args::tls_ca, "ASARRAY_TLS_CA", "CA.pem",
       "On TCP, connect with TLS, trusting CA.pem"},
      {"--tls_cert", &Args::tls_cert, "ASARRAY_TLS_CERT", "CERT.pem",
       "A client certificate, for a server that requires one (with --tls_key)"},
      {"--tls_key", &Args::tls_key, "ASARRAY_TLS_KEY", "KEY.pem", "The private key of --tls_cert"},
  };
  for (const auto& option : kConnection) {
    app_.add_option(option.flag, args_.*option.value, option.what)
        ->envname(option.variable)
        ->type_name(option.type);
  }

  CLI::App* convert = app_.add_subcommand(
      "convert",
      "Convert .npy files, .npz archives or a JSON literal. Several files, or any .npz, convert "
      "in one ConvertBatch call, all or nothing; each result's line then has a \"key\".");
  convert->add_option("files", args_.files, "FILE.npy or FILE.npz, one or more")->type_name("FILE");
  AddOptional(convert, "--json", &args_.json, "A nested literal, such as '[[1, 2.5], [3, 4]]'")
      ->type_name("LITERAL");
  AddOptional(convert, "--via", &args_.via,
              "How the elements reach the server: shm (a shared-memory region, default on "
              "the host), fd (a memfd over the local transport) or inline (in the request, "
              "default on TCP)")
      ->check(CLI::IsMember({"shm", "inline", "fd"}));
  AddConversionOptions(convert);
  convert->add_flag("--requires-grad", args_.requires_grad, "The result requires grad");

  CLI::App* take = app_.add_subcommand(
      "take", "Convert a tensor the server holds; its memory comes as a descriptor");
  take->add_option("ID", args_.id, "The held tensor's id")->required();
  AddConversionOptions(take);
  take->add_flag("--requires-grad", args_.requires_grad, "The result requires grad");

  CLI::App* read =
      app_.add_subcommand("read", "Read a held tensor's elements over gRPC (as a remote caller)");
  read->add_option("ID", args_.id, "The held tensor's id")->required();
  AddOptional(read, "--save", &args_.save, "The .npy file to write")
      ->type_name("OUT.npy")
      ->required();

  app_.add_subcommand("release", "Release a handle")
      ->add_option("ID", args_.id, "The handle's id")
      ->required();
  app_.add_subcommand("list", "List the live handles");
  app_.add_subcommand("stats", "Print the server's counters as JSON");
  app_.add_subcommand("health", "Print SERVING when the server serves");
  app_.add_subcommand("help", "Print the usage of asarrayctl, or of COMMAND")
      ->add_option("COMMAND", help_topic_, "A command");
}

std::string CommandLine::Help() const { return app_.help(); }

absl::StatusOr<bool> CommandLine::Parse(int argc, char** argv) {
  // CLI11 reports through exceptions; none leaves this function.
  try {
    app_.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::printf("%s", app_.help().c_str());
    return false;
  } catch (const CLI::ParseError& e) {
    return Usage(e.what());
  }
  args_.command = app_.get_subcommands().front()->get_name();
  if (args_.command != "help") return true;
  // The help of asarrayctl, or of the command named (not of `help` itself).
  const CLI::App* topic = &app_;
  std::string prefix;
  if (!help_topic_.empty()) {
    topic = nullptr;
    for (const CLI::App* command : app_.get_subcommands({})) {
      if (command->get_name() == help_topic_) topic = command;
    }
    prefix = app_.get_name() + " ";
  }
  if (topic != nullptr) {
    std::printf("%s", app_.get_formatter()
                          ->make_help(topic, prefix + topic->get_name(), CLI::AppFormatMode::Normal)
                          .c_str());
    return false;
  }
  return Usage(absl::StrCat("unknown command '", help_topic_, "'"));
}

Json HandleJson(const HandleInfo& h) {
  Json j;
  j["id"] = h.id;
  j["dtype"] = std::string(DTypeName(h.dtype));
  j["shape"] = h.layout.shape;
  j["strides"] = h.layout.strides;
  j["offset"] = h.layout.offset;
  j["device"] = DeviceName(h.device);
  j["requires_grad"] = h.requires_grad;
  j["shares_memory"] = h.shares_memory;
  if (!h.shm_name.empty()) {
    j["memory"] = {
        {"kind", "shm"}, {"name", h.shm_name}, {"offset", h.shm_offset}, {"size", h.shm_size}};
  }
  if (h.has_fd) {
    j["memory"] = {{"kind", "fd"},
                   {"offset", h.fd_offset},
                   {"size", h.fd_size},
                   {"request_fd", h.fd_from_request}};
  }
  if (!h.cuda_ipc_handle.empty()) {
    j["memory"] = {{"kind", "cuda"},
                   {"device", h.device.index},
                   {"ipc_handle", absl::BytesToHexString(h.cuda_ipc_handle)},
                   {"offset", h.cuda_offset},
                   {"size", h.cuda_size}};
  }
  if (h.lease_expires != absl::InfinitePast()) {
    j["lease_expires_unix_ms"] = absl::ToUnixMillis(h.lease_expires);
  }
  j["warnings"] = h.warnings;
  return j;
}

// Every scalar field of a message, numbers as JSON numbers (protobuf's own
// JSON mapping writes 64-bit ones as strings): Stats grows, and this stays
// complete.
Json ScalarFieldsJson(const google::protobuf::Message& message) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Descriptor& descriptor = *message.GetDescriptor();
  const google::protobuf::Reflection& reflection = *message.GetReflection();
  Json j = Json::object();
  for (int i = 0; i < descriptor.field_count(); ++i) {
    const FieldDescriptor& field = *descriptor.field(i);
    if (field.is_repeated()) continue;
    Json& value = j[field.name()];
    switch (field.cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32:
        value = reflection.GetInt32(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_INT64:
        value = reflection.GetInt64(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_UINT32:
        value = reflection.GetUInt32(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        value = reflection.GetUInt64(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_DOUBLE:
        value = reflection.GetDouble(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_FLOAT:
        value = reflection.GetFloat(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_BOOL:
        value = reflection.GetBool(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_STRING:
        value = reflection.GetString(message, &field);
        break;
      case FieldDescriptor::CPPTYPE_ENUM:
        value = reflection.GetEnum(message, &field)->name();
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        j.erase(field.name());
        break;
    }
  }
  return j;
}

// Progress on a terminal, for transfers past 16 MiB.
void ShowProgress(uint64_t done, uint64_t total) {
  if (total < (16u << 20)) return;
  std::fprintf(stderr, "\r%3d%% (%llu / %llu MiB)", static_cast<int>(done * 100 / total),
               static_cast<unsigned long long>(done >> 20),
               static_cast<unsigned long long>(total >> 20));
  if (done >= total) std::fprintf(stderr, "\n");
}

absl::Status WriteFile(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::Status SaveNpy(const std::string& path, DType dtype, const Dims& shape,
                     absl::string_view row_major) {
  ASARRAY_ASSIGN_OR_RETURN(const std::string image, EncodeNpy(dtype, shape, row_major));
  return WriteFile(path, image);
}

// A read-only mapping of a whole file.
class MappedFile {
 public:
  static absl::StatusOr<MappedFile> Open(const std::string& path) {
    MappedFile f;
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
    struct stat st;
    fstat(fd, &st);
    f.size_ = static_cast<size_t>(st.st_size);
    if (f.size_ > 0) {
      void* p = mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        close(fd);
        return absl::InternalError(absl::StrCat("cannot map ", path));
      }
      f.data_ = static_cast<const char*>(p);
    }
    close(fd);
    return f;
  }
  MappedFile(MappedFile&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(o.size_) {}
  MappedFile(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) munmap(const_cast<char*>(data_), size_);
  }
  absl::string_view view() const { return absl::string_view(data_, size_); }

 private:
  MappedFile() = default;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

absl::StatusOr<ConvertOptions> OptionsFromArgs(const Args& args) {
  ConvertOptions options;
  options.requires_grad = args.requires_grad;
  if (args.dtype) {
    ASARRAY_ASSIGN_OR_RETURN(options.dtype, ParseDType(*args.dtype));
  }
  if (args.device) {
    ASARRAY_ASSIGN_OR_RETURN(options.device, ParseDevice(*args.device));
  }
  // The command line allows only true, false and none.
  if (args.copy == "true") options.copy = true;
  if (args.copy == "false") options.copy = false;
  return options;
}

// A result's elements, row-major: read through the mapping or the CUDA IPC
// handle when this process has one, and over gRPC otherwise (a remote
// server, or a CUDA result this build cannot open).
absl::StatusOr<std::string> ResultBytes(Client& client, const MappedTensor& result) {
  return result.has_elements() ? result.RowMajorBytes() : client.ReadBytes(result.id());
}

// Prints a result's handle (with its key, for one of a batch). The handle
// outlives this command: whoever uses it releases it.
void PrintHandle(MappedTensor& result, const std::string* key = nullptr) {
  result.DetachLease();
  Json j = HandleJson(result.handle());
  if (key != nullptr) j["key"] = *key;
  std::printf("%s\n", j.dump().c_str());
}

// Prints a result's handle, and saves its elements with --save.
absl::Status Print(Client& client, const Args& args, MappedTensor result) {
  PrintHandle(result);
  if (args.save) {
    ASARRAY_ASSIGN_OR_RETURN(const std::string bytes, ResultBytes(client, result));
    ASARRAY_RETURN_IF_ERROR(SaveNpy(*args.save, result.dtype(), result.shape(), bytes));
  }
  return absl::OkStatus();
}

// One array to convert: a .npy file, or a member of an .npz.
struct Input {
  std::string key;   // the .npz key, or the .npy file's name less ".npy"
  std::string path;  // the file it is in
  NpyHeader npy;
  const char* data;  // npy.data_bytes of them
};

// The array of a mapped .npy file. ParseNpyHeader's message as it is.
absl::StatusOr<Input> NpyInput(const std::string& path, const MappedFile& file) {
  ASARRAY_ASSIGN_OR_RETURN(const NpyHeader npy, ParseNpyHeader(file.view()));
  if (file.view().size() - npy.data_offset < npy.data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds fewer than the ", npy.data_bytes,
                                                   " data bytes its header declares"));
  }
  absl::string_view key = path;
  const size_t slash = key.rfind('/');
  if (slash != absl::string_view::npos) key.remove_prefix(slash + 1);
  absl::ConsumeSuffix(&key, ".npy");
  return Input{std::string(key), path, npy, file.view().data() + npy.data_offset};
}

// The transport of the elements: --via, else what the client can use.
std::string Via(const Client& client, const Args& args) {
  // A remote client sends the bytes: it shares no memory with the server.
  return args.via ? *args.via : client.remote() ? "inline" : "shm";
}

// The fields a region's and a memfd's source have in common.
template <typename ArrayProto>
void DescribeInput(const Input& input, uint64_t offset, ArrayProto* array) {
  array->set_offset(offset);
  array->set_size(input.npy.data_bytes);
  array->set_dtype(DTypeToProto(input.npy.dtype));
  LayoutToProto(input.npy.layout, array->mutable_layout());
}

// Several arrays (the files', and the members of each .npz) in one
// ConvertBatch call: one line per result, and --save as one .npz.
absl::Status ConvertMany(Client& client, const Args& args, const ConvertOptions& options) {
  const bool save = args.save.has_value();
  if (save && !absl::EndsWith(*args.save, ".npz")) {
    return Usage("converting several arrays, or an .npz, saves them with --save OUT.npz");
  }
  // The files stay open, and the archives read, until the call is done.
  std::deque<MappedFile> files;
  std::deque<std::vector<NpzMember>> archives;
  std::vector<Input> inputs;
  std::map<std::string, const std::string*> paths;  // key -> the file it came from
  for (const std::string& path : args.files) {
    if (absl::EndsWith(path, ".npz")) {
      ASARRAY_ASSIGN_OR_RETURN(std::vector<NpzMember> members, ReadNpz(path));
      archives.push_back(std::move(members));
      for (const NpzMember& m : archives.back()) {
        inputs.push_back({m.name, path, m.header, m.npy.data() + m.header.data_offset});
      }
    } else {
      ASARRAY_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
      files.push_back(std::move(file));
      absl::StatusOr<Input> input = NpyInput(path, files.back());
      if (!input.ok()) {
        return absl::Status(input.status().code(),
                            absl::StrCat(path, ": ", input.status().message()));
      }
      inputs.push_back(*std::move(input));
    }
  }
  for (const Input& input : inputs) {
    const auto [it, fresh] = paths.emplace(input.key, &input.path);
    if (!fresh) {
      return absl::InvalidArgumentError(absl::StrCat("two arrays have the key '", input.key,
                                                     "' (from ", *it->second, " and ", input.path,
                                                     "); each result needs a key of its own"));
    }
  }
  if (inputs.empty()) return absl::InvalidArgumentError("the .npz files hold no arrays");

  const std::string via = Via(client, args);
  if (via != "inline" && client.remote()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this client is remote (TCP): --via ", via,
        " needs memory shared with the server, on its host; send the bytes with --via inline"));
  }
  // shm and fd: every array in one region, each at a 64-byte aligned offset.
  std::vector<uint64_t> offsets;
  std::optional<SharedRegion> region;  // must outlive the conversion
  if (via != "inline") {
    int64_t total = 0;
    for (const Input& input : inputs) {
      int64_t start, end;
      if (!CheckedAdd(total, 63, &start) ||
          !CheckedAdd(start & ~int64_t{63}, static_cast<int64_t>(input.npy.data_bytes), &end)) {
        return absl::InvalidArgumentError("the arrays together are too large for one region");
      }
      offsets.push_back(static_cast<uint64_t>(start & ~int64_t{63}));
      total = end;
    }
    ASARRAY_ASSIGN_OR_RETURN(region, via == "fd"
                                         ? SharedRegion::CreateMemfd(static_cast<size_t>(total))
                                         : SharedRegion::Create(static_cast<size_t>(total)));
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (inputs[i].npy.data_bytes == 0) continue;
      std::memcpy(static_cast<char*>(region->data()) + offsets[i], inputs[i].data,
                  inputs[i].npy.data_bytes);
    }
  }
  v1::ConvertBatchRequest request;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Input& input = inputs[i];
    request.add_keys(input.key);
    v1::ConvertRequest* item = request.add_items();
    OptionsToProto(options, item->mutable_options());
    if (via == "inline") {
      v1::InlineArray* array = item->mutable_source()->mutable_inline_array();
      array->set_dtype(DTypeToProto(input.npy.dtype));
      LayoutToProto(input.npy.layout, array->mutable_layout());
      array->set_storage(input.data, input.npy.data_bytes);
    } else if (via == "fd") {
      v1::FdArray* array = item->mutable_source()->mutable_fd();
      array->set_fd_index(0);
      DescribeInput(input, offsets[i], array);
    } else {
      v1::SharedMemoryArray* array = item->mutable_source()->mutable_shared_memory();
      array->set_name(region->name());
      DescribeInput(input, offsets[i], array);
    }
  }
  const int fd = region.has_value() && region->is_memfd() ? region->fd() : -1;
  ASARRAY_ASSIGN_OR_RETURN(std::vector<MappedTensor> results,
                           client.ConvertAndMapBatch(request, fd >= 0 ? absl::MakeConstSpan(&fd, 1)
                                                                      : absl::Span<const int>()));
  if (results.size() != inputs.size()) {
    return absl::InternalError(absl::StrCat("the server answered ", results.size(), " results for ",
                                            inputs.size(), " arrays"));
  }
  for (size_t i = 0; i < results.size(); ++i) PrintHandle(results[i], &inputs[i].key);
  if (!save) return absl::OkStatus();
  std::deque<std::string> bytes;  // what `arrays` view
  std::vector<NpzArray> arrays;
  for (size_t i = 0; i < results.size(); ++i) {
    ASARRAY_ASSIGN_OR_RETURN(std::string elements, ResultBytes(client, results[i]));
    bytes.push_back(std::move(elements));
    arrays.push_back({inputs[i].key, results[i].dtype(), results[i].shape(), bytes.back()});
  }
  return WriteNpz(*args.save, arrays);
}

absl::Status Convert(Client& client, const Args& args) {
  ASARRAY_ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromArgs(args));
  std::optional<MappedTensor> result;
  std::optional<SharedRegion> region;  // must outlive the conversion
  if (args.json) {
    if (!args.files.empty()) return Usage("give either files or --json, not both");
    ASARRAY_ASSIGN_OR_RETURN(const Literal literal, ParseLiteralJson(*args.json));
    ASARRAY_ASSIGN_OR_RETURN(result, client.ConvertLiteral(literal, options));
  } else if (args.files.empty()) {
    return Usage("convert needs FILE.npy, FILE.npz or --json");
  } else if (args.files.size() > 1 || absl::EndsWith(args.files[0], ".npz") ||
             (args.save && absl::EndsWith(*args.save, ".npz"))) {
    return ConvertMany(client, args, options);
  } else {
    ASARRAY_ASSIGN_OR_RETURN(const MappedFile file, MappedFile::Open(args.files[0]));
    ASARRAY_ASSIGN_OR_RETURN(const Input input, NpyInput(args.files[0], file));
    const NpyHeader& npy = input.npy;
    const char* data = input.data;
    const std::string via = Via(client, args);
    if (via == "inline") {
      ASARRAY_ASSIGN_OR_RETURN(
          result, client.ConvertInline(data, npy.data_bytes, npy.dtype, npy.layout, options));
    } else {
      ASARRAY_ASSIGN_OR_RETURN(region, via == "fd" ? SharedRegion::CreateMemfd(npy.data_bytes)
                                                   : SharedRegion::Create(npy.data_bytes));
      if (npy.data_bytes > 0) std::memcpy(region->data(), data, npy.data_bytes);
      ASARRAY_ASSIGN_OR_RETURN(
          result, client.ConvertRegion(*region, 0, npy.data_bytes, npy.dtype, npy.layout, options));
    }
  }
  return Print(client, args, *std::move(result));
}

absl::Status Take(Client& client, const Args& args) {
  ASARRAY_ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromArgs(args));
  ASARRAY_ASSIGN_OR_RETURN(MappedTensor result, client.ConvertTensor(args.id, options));
  return Print(client, args, std::move(result));
}

absl::Status Run(const Args& args) {
  const std::string& cmd = args.command;
  // Over gRPC, unless the command's memory travels as descriptors.
  const bool local = cmd == "take" || (cmd == "convert" && args.via == "fd");
  ClientOptions client_options;
  client_options.local_transport = local;
  client_options.tls_ca_file = args.tls_ca;
  client_options.tls_cert_file = args.tls_cert;
  client_options.tls_key_file = args.tls_key;
  ASARRAY_ASSIGN_OR_RETURN(std::unique_ptr<Client> client,
                           Client::Connect(args.server, client_options));
  if (local && !client->remote() && !client->has_local_transport()) {
    return absl::UnavailableError(
        absl::StrCat("the server has no local transport beside its socket, which ", cmd,
                     " needs here; it listens on a Unix socket unless --local_transport=false"));
  }
  // A command's handles outlive it: whoever uses them releases them.
  client->set_lease_ttl(absl::ZeroDuration());
  if (isatty(STDERR_FILENO)) client->set_progress(ShowProgress);
  if (cmd == "convert") return Convert(*client, args);
  if (cmd == "take") return Take(*client, args);
  if (cmd == "read") {
    HandleInfo handle;
    ASARRAY_ASSIGN_OR_RETURN(const std::string bytes, client->ReadBytes(args.id, &handle));
    std::printf("%s\n", HandleJson(handle).dump().c_str());
    return SaveNpy(*args.save, handle.dtype, handle.layout.shape, bytes);
  }
  if (cmd == "release") return client->Release(args.id);
  if (cmd == "list") {
    ASARRAY_ASSIGN_OR_RETURN(const std::vector<HandleInfo> handles, client->List());
    for (const HandleInfo& h : handles) std::printf("%s\n", HandleJson(h).dump().c_str());
    return absl::OkStatus();
  }
  if (cmd == "stats") {
    ASARRAY_ASSIGN_OR_RETURN(const v1::StatsResponse s, client->Stats());
    const Json j = ScalarFieldsJson(s);
    std::printf("%s\n", j.dump().c_str());
    return absl::OkStatus();
  }
  if (cmd == "health") {
    ASARRAY_RETURN_IF_ERROR(client->Health());
    std::printf("SERVING\n");
    return absl::OkStatus();
  }
  return absl::InternalError(absl::StrCat("the command '", cmd, "' has no implementation"));
}

// The exit status: 0, 1 for a failed call, 2 for a usage error (after the
// usage of the command at hand).
int Main(int argc, char** argv) {
  CommandLine line;
  absl::StatusOr<bool> parsed = line.Parse(argc, argv);
  absl::Status status = parsed.status();
  if (parsed.ok()) {
    if (!*parsed) return 0;
    status = Run(line.args());
    if (status.ok()) return 0;
  }
  std::fprintf(stderr, "%s: %s\n", absl::StatusCodeToString(status.code()).c_str(),
               std::string(status.message()).c_str());
  if (!IsUsage(status)) return 1;
  std::fprintf(stderr, "\n%s", line.Help().c_str());
  return 2;
}

}  // namespace
}  // namespace asarray

int main(int argc, char** argv) { return asarray::Main(argc, argv); }
