//===- CompilerTest.cpp - bridgec on inline sources ------------------------===//
//
// Sema and diagnostics on small sources with exact expected text (the lit
// suite covers every code through the driver; these pin the library API).
//
//===----------------------------------------------------------------------===//
#include "bridgec/Basic/Diagnostic.h"
#include "bridgec/Emit/Emitters.h"
#include "bridgec/Parse/Parser.h"
#include "bridgec/Sema/Sema.h"

#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/raw_ostream.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <unistd.h>

using namespace bridgec;

namespace {
const char *MiniSchema = R"(schema s {
  field num_layers : int;
  field hidden_size : int;
  field tied : bool = false;
  range layers(i) = num_layers;
  param embedding.word_embeddings.weight [100, hidden_size] : vocab;
  param output_layer.weight [100, hidden_size] : vocab when !tied;
  param decoder.layers.{i}.norm.weight [hidden_size] : replicated;
  param decoder.layers.{i}.proj.weight [hidden_size, hidden_size] : row;
}
)";

/// Compiles \p Source against MiniSchema; returns diagnostics text.
std::string compile(const std::string &Source, std::string *Model = nullptr) {
  std::string Path = "/tmp/bridge-unit-" + std::to_string(::getpid()) + ".bridge";
  {
    std::ofstream Out(Path);
    Out << Source;
  }
  llvm::SourceMgr SM;
  std::string Diags;
  llvm::raw_string_ostream OS(Diags);
  DiagnosticEngine D(SM, OS);
  Compilation C(D, {});
  C.loadSchema("schema.bridge", MiniSchema);
  C.loadMain(Path);
  auto Set = C.analyze();
  if (Set && Model) {
    llvm::raw_string_ostream MS(*Model);
    dumpModel(*Set, MS);
  }
  std::remove(Path.c_str());
  OS.flush();
  // Make the message independent of the temporary path.
  size_t P;
  while ((P = Diags.find(Path)) != std::string::npos)
    Diags.replace(P, Path.size(), "t.bridge");
  return Diags;
}
} // namespace

TEST_CASE("a correct bridge compiles to the expected model") {
  std::string Model;
  std::string D = compile(R"(bridge m {
  match model_type "m";
  config { num_layers = hf.n; hidden_size = hf.h; }
  weights {
    embedding.word_embeddings.weight <- wte;
    output_layer.weight <- head : vocab when !tied;
    for i in layers {
      decoder.layers.{i}.norm.weight <- h.{i}.ln;
      decoder.layers.{i}.proj.weight <- transpose(h.{i}.w);
    }
  }
}
)",
                          &Model);
  CHECK(D == "");
  CHECK(Model.find("tensor for i in layers: decoder.layers.{i}.proj.weight <- transpose(h.{i}.w) : row") !=
        std::string::npos);
  CHECK(Model.find("export hf.n = num_layers  (reversed)") != std::string::npos);
}

TEST_CASE("diagnostics carry file, line, column, code, source line and caret") {
  std::string D = compile(R"(bridge m {
  match model_type "m";
  weights {
    embeding.word_embeddings.weight <- wte;
  }
}
)");
  CHECK(D == "t.bridge:4:5: error: unknown Megatron tensor 'embeding.word_embeddings.weight'; did you mean "
             "'embedding.word_embeddings.weight'? [BR2001]\n"
             "    embeding.word_embeddings.weight <- wte;\n"
             "    ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\n");
}

TEST_CASE("an HF tensor read by two rules under the same condition is rejected") {
  std::string D = compile(R"(bridge m {
  match model_type "m";
  weights {
    embedding.word_embeddings.weight <- wte;
    output_layer.weight <- wte;
  }
}
)");
  CHECK(D.find("error: HF tensor 'wte' is claimed by two rules [BR2004]") != std::string::npos);
  CHECK(D.find("note: the other rule is here") != std::string::npos);
}

TEST_CASE("syntax errors are all reported, with recovery") {
  std::string D = compile("bridge m {\n  match model_type \"m\"\n  config { x = ; }\n}\n");
  size_t Count = 0;
  for (size_t P = D.find("[BR0101]"); P != std::string::npos; P = D.find("[BR0101]", P + 1))
    ++Count;
  CHECK(Count >= 2);
}
