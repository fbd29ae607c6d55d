//===- bridgec.cpp - the .bridge compiler driver ---------------------------===//
//
// bridgec FILE.bridge -o OUT.inc [-d OUT.d] [-I DIR]... [--write-if-changed]
//         [--emit=tables|model|format] [--schema=FILE] [--error-limit=N]
// bridgec --emit=schema -o SCHEMA.inc
//
// Exit codes: 0 success, 1 diagnostics reported, 2 usage or I/O error.
// Nothing is written when an error was reported.
//
//===----------------------------------------------------------------------===//
#include "bridgec/Basic/Diagnostic.h"
#include "bridgec/Emit/Emitters.h"
#include "bridgec/Parse/Parser.h"
#include "bridgec/Sema/Recipes.h"
#include "bridgec/Sema/Sema.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/WithColor.h"
#include "llvm/Support/raw_ostream.h"

#include <string>

namespace {
// The schema text, embedded at build time (compiler/schema/megatron.bridge).
#include "SchemaText.inc"
} // namespace

using namespace llvm;

static cl::OptionCategory Cat("bridgec options");
static cl::opt<std::string> Input(cl::Positional, cl::desc("<file.bridge>"), cl::cat(Cat));
static cl::opt<std::string> Output("o", cl::desc("Output file ('-' for stdout)"), cl::value_desc("file"),
                                   cl::init("-"), cl::cat(Cat));
static cl::opt<std::string> DepFile("d", cl::desc("Write a Makefile depfile listing every file read"),
                                    cl::value_desc("file"), cl::cat(Cat));
static cl::list<std::string> ImportDirs("I", cl::desc("Directory searched for imports"), cl::value_desc("dir"),
                                        cl::Prefix, cl::cat(Cat));
static cl::opt<bool> WriteIfChanged("write-if-changed", cl::desc("Leave the output untouched when unchanged"),
                                    cl::cat(Cat));
enum class EmitKind { Tables, Schema, Model, Format, Recipes };
static cl::opt<EmitKind> Emit("emit", cl::desc("What to write"), cl::init(EmitKind::Tables),
                              cl::values(clEnumValN(EmitKind::Tables, "tables", "C++ constexpr tables (default)"),
                                         clEnumValN(EmitKind::Schema, "schema", "the schema's C++ table"),
                                         clEnumValN(EmitKind::Model, "model", "a text dump of the checked model"),
                                         clEnumValN(EmitKind::Format, "format", "the file in canonical form"),
                                         clEnumValN(EmitKind::Recipes, "recipes",
                                                    "the C++ table of the recipes of the file and its imports")),
                              cl::cat(Cat));
static cl::opt<bool> Format("format", cl::desc("Same as --emit=format"), cl::cat(Cat));
static cl::opt<std::string> SchemaPath("schema", cl::desc("Use this schema instead of the embedded one"),
                                       cl::value_desc("file"), cl::cat(Cat));
static cl::opt<unsigned> ErrorLimit("error-limit", cl::desc("Stop after this many errors (0 = no limit)"),
                                    cl::init(50), cl::cat(Cat));
static cl::opt<std::string> ModelsDir("models-dir",
                                      cl::desc("Where recipes find models' config.json (default: models/ beside the "
                                               "main file)"),
                                      cl::value_desc("dir"), cl::cat(Cat));
static cl::opt<bool> ListDiags("list-diagnostics", cl::desc("Print every diagnostic code and exit"), cl::cat(Cat));

static int writeOutput(const std::string &Text) {
  if (Output == "-") {
    outs() << Text;
    outs().flush();
    return 0;
  }
  if (WriteIfChanged) {
    auto Old = MemoryBuffer::getFile(Output);
    if (Old && (*Old)->getBuffer() == Text)
      return 0;
  }
  std::error_code EC;
  raw_fd_ostream OS(Output, EC);
  if (EC) {
    WithColor::error(errs(), "bridgec") << "cannot write '" << Output << "': " << EC.message() << " [BR0001]\n";
    return 2;
  }
  OS << Text;
  return 0;
}

static int writeDepFile(const std::vector<std::string> &Inputs) {
  if (DepFile.empty())
    return 0;
  std::string Text = Output + ":";
  for (auto &I : Inputs) {
    SmallString<256> Abs(I);
    sys::fs::make_absolute(Abs);
    sys::path::remove_dots(Abs, /*remove_dot_dot=*/true);
    std::string Esc;
    for (char C : Abs.str()) {
      if (C == ' ')
        Esc += '\\';
      Esc += C;
    }
    Text += " " + Esc;
  }
  Text += "\n";
  std::error_code EC;
  raw_fd_ostream OS(DepFile, EC);
  if (EC) {
    WithColor::error(errs(), "bridgec") << "cannot write '" << DepFile << "': " << EC.message() << " [BR0001]\n";
    return 2;
  }
  OS << Text;
  return 0;
}

int main(int argc, char **argv) {
  cl::HideUnrelatedOptions(Cat);
  // Usage errors exit 2, not LLVM's 1 (which means "diagnostics" here).
  if (!cl::ParseCommandLineOptions(argc, argv,
                                   "bridgec: compiles .bridge mappings (HF <-> Megatron-Core) into C++ tables\n",
                                   &errs()))
    return 2;
  if (ListDiags) {
    for (const bridgec::DiagInfo &I : bridgec::allDiagInfos())
      outs() << formatv("BR{0:d4} {1} {2}\n", I.Code, I.Name, I.Format);
    return 0;
  }
  if (Format)
    Emit = EmitKind::Format;
  if (Input.empty() && Emit != EmitKind::Schema) {
    WithColor::error(errs(), "bridgec") << "no input file (see --help)\n";
    return 2;
  }

  SourceMgr SM;
  bridgec::DiagnosticEngine Diags(SM, errs(), ErrorLimit == 0 ? ~0u : ErrorLimit.getValue());

  if (Emit == EmitKind::Format) {
    auto Buf = MemoryBuffer::getFile(Input);
    if (!Buf) {
      WithColor::error(errs(), "bridgec") << "cannot open '" << Input << "': " << Buf.getError().message()
                                          << " [BR0001]\n";
      return 2;
    }
    unsigned ID = SM.AddNewSourceBuffer(std::move(*Buf), SMLoc());
    auto File = bridgec::parseBuffer(ID, Diags);
    if (Diags.hasErrors())
      return 1;
    std::string Text;
    raw_string_ostream OS(Text);
    bridgec::formatFile(*File, SM, OS);
    return writeOutput(OS.str());
  }

  std::string SchemaName = "compiler/schema/megatron.bridge";
  std::string SchemaText = kEmbeddedSchema;
  std::vector<std::string> Extra;
  if (!SchemaPath.empty()) {
    auto Buf = MemoryBuffer::getFile(SchemaPath);
    if (!Buf) {
      WithColor::error(errs(), "bridgec") << "cannot open '" << SchemaPath << "': " << Buf.getError().message()
                                          << " [BR0001]\n";
      return 2;
    }
    SchemaName = SchemaPath;
    SchemaText = (*Buf)->getBuffer().str();
    Extra.push_back(SchemaPath);
  }
  bridgec::Compilation C(Diags, std::vector<std::string>(ImportDirs.begin(), ImportDirs.end()));
  C.loadSchema(SchemaName, SchemaText);
  uint64_t Hash = bridgec::schemaFingerprint(SchemaText);

  if (Emit == EmitKind::Schema) {
    // The schema alone: analyze with no main file.
    auto Set = C.analyze();
    if (Diags.hasErrors())
      return 1;
    std::string Text;
    raw_string_ostream OS(Text);
    bridgec::emitSchemaTable(C.schema(), SM, Hash, OS);
    if (int RC = writeOutput(OS.str()))
      return RC;
    return writeDepFile(Extra);
  }

  if (!C.loadMain(Input))
    return 2; // the main file could not be read
  if (Emit == EmitKind::Recipes) {
    std::string Models = ModelsDir;
    if (Models.empty()) {
      SmallString<256> Dir(sys::path::parent_path(Input.getValue()));
      sys::path::append(Dir, "models");
      Models = Dir.str().str();
    }
    std::vector<std::string> ModelFiles;
    auto Recipes = bridgec::recipe::checkRecipes(C.files(), Models, Diags, &ModelFiles);
    if (Diags.hasErrors())
      return 1;
    std::string Text;
    raw_string_ostream OS(Text);
    bridgec::emitRecipeTable(Recipes, SM, OS);
    if (int RC = writeOutput(OS.str()))
      return RC;
    std::vector<std::string> Inputs = C.inputFiles();
    Inputs.insert(Inputs.end(), ModelFiles.begin(), ModelFiles.end());
    return writeDepFile(Inputs);
  }
  auto Set = C.analyze();
  if (!Set || Diags.hasErrors())
    return 1;
  std::string Text;
  raw_string_ostream OS(Text);
  if (Emit == EmitKind::Model)
    bridgec::dumpModel(*Set, OS);
  else
    bridgec::emitMappingTables(*Set, SM, Hash, OS);
  if (int RC = writeOutput(OS.str()))
    return RC;
  std::vector<std::string> Inputs = C.inputFiles();
  Inputs.insert(Inputs.end(), Extra.begin(), Extra.end());
  return writeDepFile(Inputs);
}
