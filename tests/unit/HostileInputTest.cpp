//===- HostileInputTest.cpp - readers and --out against hostile input -----===//
//
// The one JSON reader (linear time, depth limit, duplicate keys), the way
// inputs are opened (regular files only, size limits, links that leave the
// checkpoint), names read from files, and the checks on --out with its
// final rename that never replaces what it did not check.
//
//===----------------------------------------------------------------------===//
#include "bridge/Config.h"
#include "bridge/Error.h"
#include "bridge/Files.h"
#include "bridge/OutputDir.h"
#include "bridge/Plan.h"
#include "bridge/Registry.h"
#include "bridge/Sidecar.h"
#include "bridge/StrictJson.h"

#include <doctest/doctest.h>

#include "TestUtil.h"
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fcntl.h>
#include <fstream>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

using namespace bridge;
using bridge::test::errorOf;

namespace {


/// A fresh directory under /tmp, removed at the end of the test.
struct TempDir {
  std::string Path;
  TempDir() {
    char T[] = "/tmp/bridge-unit-XXXXXX";
    Path = ::mkdtemp(T);
  }
  ~TempDir() { files::removeAll(Path); }
  std::string operator/(const std::string &N) const { return Path + "/" + N; }
};

void writeText(const std::string &P, const std::string &T) { std::ofstream(P) << T; }

double secondsOf(const std::function<void()> &F) {
  auto A = std::chrono::steady_clock::now();
  F();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - A).count();
}

} // namespace

TEST_CASE("parseJson: 100,000 tensors in a header parse in linear time, both JSON flavours") {
  std::string Text = "{";
  for (int I = 0; I < 100000; ++I)
    Text += (I ? "," : "") + std::string("\"model.layers.") + std::to_string(I) +
            ".weight\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}";
  Text += "}";
  // The callback parser took 187 s for 80,000; linear is well under a second.
  nlohmann::json H;
  double Map = secondsOf([&] { H = parseJson<nlohmann::json>(Text, "h.safetensors", "the header"); });
  CHECK(H.size() == 100000);
  CHECK(Map < 3.0);
  Json O;
  double Ordered = secondsOf([&] { O = parseJson<Json>(Text, "bridge.json", "bridge.json"); });
  CHECK(O.size() == 100000);
  CHECK(O.begin().key() == "model.layers.0.weight"); // the file's order kept
  CHECK(Ordered < 3.0);
}

TEST_CASE("parseJson: nesting beyond 128 levels, duplicate keys and bad text are errors naming the file") {
  auto Deep = [](int N) { return std::string(N, '[') + std::string(N, ']'); };
  CHECK(parseJson<Json>(Deep(128), "c.json", "config.json").is_array());
  CHECK(errorOf([&] { parseJson<Json>(Deep(129), "c.json", "config.json"); }) ==
        "error: c.json: config.json nests arrays and objects more than 128 levels deep");
  CHECK(errorOf([&] { parseJson<nlohmann::json>(Deep(100000), "h", "the header"); }).find("more than 128") !=
        std::string::npos);
  std::string Objects;
  for (int I = 0; I < 200; ++I)
    Objects += "{\"a\":";
  CHECK(errorOf([&] { parseJson<Json>(Objects + "1" + std::string(200, '}'), "c", "x"); }).find("128 levels") !=
        std::string::npos);
  CHECK(errorOf([&] { parseJson<Json>(R"({"a": {"b": 1, "b": 2}})", "c.json", "config.json"); }) ==
        "error: c.json: config.json has the key 'b' twice in one object; which one holds is unclear");
  CHECK(parseJson<Json>(R"({"a": {"b": 1}, "c": {"b": 2}})", "c.json", "config.json")["c"]["b"] == 2);
  CHECK(errorOf([&] { parseJson<Json>("{\"a\": ", "c.json", "config.json"); })
            .rfind("error: c.json: config.json is not valid JSON: ", 0) == 0);
  CHECK(parseJson<Json>("[1, 2.5, true, null, \"s\"]", "c", "x").dump() == "[1,2.5,true,null,\"s\"]");
}

TEST_CASE("files: a failed run's directory is removed while another process still creates files in it") {
  // The race of a multi-process import whose process 1 failed: process 0
  // removes the partial directory while process 2's writers still open
  // their files in it by path. Removed in place, an entry created after the
  // listing made the final rmdir fail and the directory stayed behind.
  TempDir T;
  const std::string Out = T / "mg.partial-1";
  for (int Round = 0; Round < 20; ++Round) {
    files::makeDirs(Out + "/iter_0000000");
    for (int I = 0; I < 200; ++I)
      writeText(Out + "/iter_0000000/old" + std::to_string(I), "x");
    std::atomic<bool> Stop{false};
    std::atomic<int> Made{0};
    std::thread Writer([&] {
      for (int I = 0; !Stop; ++I) {
        std::string P = Out + "/iter_0000000/__" + std::to_string(I) + ".distcp";
        if (int Fd = ::open(P.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644); Fd >= 0) {
          ::close(Fd);
          ++Made;
        }
      }
    });
    while (Made < 50)
      std::this_thread::yield();
    CHECK_NOTHROW(files::removeShared(Out));
    Stop = true;
    Writer.join();
    INFO("round " << Round);
    CHECK_FALSE(files::exists(Out));
    CHECK_FALSE(files::exists(Out + ".removing"));
  }
  files::removeShared(T / "absent"); // no error
}

TEST_CASE("files: names read from files are plain names of one directory") {
  for (const char *Good : {"model.safetensors", "model-00001-of-00002.safetensors", "a b", "..x", "x.."})
    CHECK(files::isPlainName(Good));
  for (const char *Bad : {"", ".", "..", "../x", "a/b", "/etc/passwd", "x\n", "a\tb"})
    CHECK_FALSE(files::isPlainName(Bad));
  CHECK_FALSE(files::isPlainName(std::string(256, 'a')));
  CHECK_FALSE(files::isPlainName(std::string("a\0b", 3)));
}

TEST_CASE("files: inputs are regular files within a size limit, FIFOs and devices refused at once") {
  TempDir D;
  writeText(D / "config.json", "{}");
  CHECK(files::readRegularFile(D / "config.json", 16, "config.json") == "{}");
  CHECK(errorOf([&] { files::readRegularFile(D / "config.json", 1, "config.json"); })
            .find("is 2 bytes; at most 0 MiB are read") != std::string::npos);
  REQUIRE(::mkfifo((D / "fifo").c_str(), 0644) == 0);
  double T = secondsOf([&] {
    CHECK(errorOf([&] { files::readRegularFile(D / "fifo", 16, "the index"); }) ==
          "error: the index " + (D / "fifo") + " is a FIFO, not a regular file");
  });
  CHECK(T < 1.0);
  CHECK(errorOf([&] { files::readRegularFile("/dev/zero", 16, "config.json"); }) ==
        "error: config.json /dev/zero is a character device, not a regular file");
  CHECK(errorOf([&] { files::readRegularFile(D.Path, 16, "config.json"); }).find("is a directory") !=
        std::string::npos);
  files::MappedFile M(D / "fifo");
  CHECK_FALSE(M.ok());
  CHECK(M.why().find("is a FIFO") != std::string::npos);
}

TEST_CASE("files: a link may stay in the checkpoint, or lead into the HF cache's blob store") {
  TempDir D;
  files::makeDirs(D / "repo/blobs");
  files::makeDirs(D / "repo/snapshots/abc");
  files::makeDirs(D / "plain");
  writeText(D / "repo/blobs/h1", "x");
  writeText(D / "secret", "s");
  writeText(D / "plain/inside", "i");
  REQUIRE(::symlink("../../blobs/h1", (D / "repo/snapshots/abc/tokenizer.json").c_str()) == 0);
  REQUIRE(::symlink("../../../secret", (D / "repo/snapshots/abc/vocab.json").c_str()) == 0);
  REQUIRE(::symlink("inside", (D / "plain/a").c_str()) == 0);
  REQUIRE(::symlink("../secret", (D / "plain/b").c_str()) == 0);
  CHECK(files::resolvesInside(D / "repo/snapshots/abc/tokenizer.json", D / "repo/snapshots/abc"));
  CHECK_FALSE(files::resolvesInside(D / "repo/snapshots/abc/vocab.json", D / "repo/snapshots/abc"));
  CHECK(files::resolvesInside(D / "plain/a", D / "plain"));
  CHECK_FALSE(files::resolvesInside(D / "plain/b", D / "plain"));
  CHECK_FALSE(files::resolvesInside(D / "repo/blobs/h1", D / "plain")); // blobs only for a snapshot
}

TEST_CASE("OutputDir: never the root, home or working directory, an input, or what is not an output") {
  TempDir D;
  files::makeDirs(D / "hf");
  writeText(D / "hf/config.json", "{}");
  auto Refusal = [&](const std::string &Out, bool Overwrite) {
    return errorOf([&] { OutputDir(Out, {D / "hf"}, Overwrite); });
  };
  CHECK(Refusal("/", true).find("the root directory, which is never replaced") != std::string::npos);
  CHECK(Refusal(".", true).find("the working directory") != std::string::npos);
  CHECK(Refusal("..", true).find("the working directory or one above it") != std::string::npos);
  if (const char *Home = std::getenv("HOME"); Home && files::isDirectory(Home))
    CHECK(Refusal(Home, true).find("the home directory") != std::string::npos);
  CHECK(Refusal(D / "hf", true).find("is the input") != std::string::npos);
  CHECK(Refusal(D / "hf/../hf/", true).find("is the input") != std::string::npos);
  CHECK(Refusal(D.Path, true).find("contains the input") != std::string::npos);
  CHECK(Refusal(D / "hf/out", false).find("lies inside the input") != std::string::npos);
  files::makeDirs(D / "mine");
  writeText(D / "mine/keep.txt", "k");
  CHECK(Refusal(D / "mine", true).find("is not an output of bridge-run") != std::string::npos);
  CHECK(Refusal(D / "mine/keep.txt", true).find("is not an output of bridge-run") != std::string::npos);
  files::makeDirs(D / "earlier");
  writeText(D / "earlier/latest_checkpointed_iteration.txt", "0");
  CHECK(Refusal(D / "earlier", false) == "error: " + (D / "earlier") + " exists; pass --overwrite to replace it");
  CHECK(Refusal(D / "earlier", true).empty());
  files::makeDirs(D / "export");
  writeText(D / "export/config.json", "{}");
  writeText(D / "export/manifest.json", R"({"format": "safetensors", "tensors": {}})");
  CHECK(Refusal(D / "export", true).empty());
  REQUIRE(::symlink((D / "earlier").c_str(), (D / "link").c_str()) == 0);
  CHECK(Refusal(D / "link", true).find("is not an output of bridge-run") != std::string::npos);
  CHECK(Refusal(D / "new", false).empty());
}

TEST_CASE("OutputDir: the final rename never replaces what it did not check") {
  TempDir D;
  auto Partial = [&](const std::string &Name) {
    files::makeDirs(D / Name);
    writeText(D / (Name + "/latest_checkpointed_iteration.txt"), Name);
    return D / Name;
  };
  // Nothing at --out at the start: a directory that appears meanwhile stays.
  OutputDir Fresh(D / "out", {}, false);
  files::makeDirs(D / "out");
  writeText(D / "out/theirs", "t");
  std::string P1 = Partial("p1");
  CHECK(errorOf([&] { Fresh.commit(P1); }).find("appeared while this command ran") != std::string::npos);
  CHECK(files::exists(D / "out/theirs"));
  // --overwrite of an earlier output: replaced, nothing left aside.
  files::removeAll(D / "out");
  Partial("out");
  OutputDir Over(D / "out", {}, true);
  Over.commit(Partial("p2"));
  CHECK(files::readRegularFile(D / "out/latest_checkpointed_iteration.txt", 16, "t") == "p2");
  CHECK(files::list(D.Path) == std::vector<std::string>{"out", "p1"});
  // --overwrite, but another run replaced --out meanwhile: left as it is.
  OutputDir Raced(D / "out", {}, true);
  files::rename(D / "out", D / "gone");
  Partial("out");
  writeText(D / "out/theirs", "t");
  CHECK(errorOf([&] { Raced.commit(Partial("p3")); }).find("was replaced by another directory") != std::string::npos);
  CHECK(files::exists(D / "out/theirs"));
  CHECK(files::exists(D / "p3"));
}

TEST_CASE("checkSidecar: file names, dtypes, shapes and field types are checked and named") {
  Json Good = parseJson<Json>(R"({"mapping": "llama", "megatron_config": {}, "hf_config": {},
    "hf_tensors": {"w": {"file": "model.safetensors", "dtype": "BF16", "shape": [2, 3]}}})", "b", "b");
  CHECK_NOTHROW(checkSidecar(Good, "bridge.json"));
  auto With = [&](const char *Field, const Json &V) {
    Json S = Good;
    S["hf_tensors"]["w"][Field] = V;
    return errorOf([&] { checkSidecar(S, "bridge.json"); });
  };
  for (const char *Name : {"../x.safetensors", "/tmp/x.safetensors", "a/b.safetensors", "x.bin", ".safetensors"})
    CHECK(With("file", Name) == "error: bridge.json: hf_tensors['w'].file is '" + std::string(Name) +
                                    "', not a plain .safetensors file name");
  CHECK(With("file", 3) == "error: bridge.json: hf_tensors['w'].file is the number 3, not a string");
  CHECK(With("dtype", "BX16") == "error: bridge.json: hf_tensors['w'].dtype is \"BX16\", not a safetensors dtype");
  CHECK(With("shape", Json::parse("[-1]")).find("has the dimension -1, not a size") != std::string::npos);
  CHECK(With("shape", Json::parse("[18446744073709551615]")).find("not a size") != std::string::npos);
  CHECK(With("shape", Json::parse("[1099511627776, 1099511627776]")).find("impossibly large") != std::string::npos);
  Json S = Good;
  S["mapping"] = Json::array();
  CHECK(errorOf([&] { checkSidecar(S, "bridge.json"); }) == "error: bridge.json: mapping is an array, not a string");
  S = Good;
  S.erase("hf_config");
  CHECK(errorOf([&] { checkSidecar(S, "bridge.json"); }) == "error: bridge.json: hf_config is missing");
}

TEST_CASE("expandPlan: declared counts are checked before anything proportional to them is built") {
  Json HF = parseJson<Json>(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 3000,
    "vocab_size": 256, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0})", "c", "c");
  const MappingTable *T = findMappingByModelType("llama");
  REQUIRE(T);
  std::vector<Json> Fields = importConfig(*T, schema(), HF);
  // 3,000 layers from config.json alone are planned; for a checkpoint of 20
  // tensors they are refused before the plan is built.
  CHECK(errorOf([&] { expandPlan(*T, schema(), Fields, true, nullptr, 20); }) ==
        "error: the config declares 3000 layers, but the checkpoint holds only 20 tensors; each layer has at least "
        "one");
  HF["num_hidden_layers"] = 1000000;
  Fields = importConfig(*T, schema(), HF);
  double Secs = secondsOf([&] {
    CHECK(errorOf([&] { expandPlan(*T, schema(), Fields); }) ==
          "error: the config declares 1000000 layers; at most 4096 are converted");
  });
  CHECK(Secs < 1.0);
}
