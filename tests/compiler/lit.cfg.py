# lit configuration of the bridgec test suite.
# RUN lines use %bridgec; FileCheck, not and split-file come from LLVM 14.
import os
import lit.formats

config.name = "bridgec"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".bridge", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.excludes = ["Inputs", "lit.cfg.py", "lit.site.cfg.py.in", "diag_coverage.py"]
config.environment["PATH"] = os.pathsep.join([config.llvm_tools_dir, config.environment.get("PATH", os.environ["PATH"])])
# Run from the source root so that file names in messages are stable.
config.substitutions.append(("%bridgec", config.bridgec))
config.substitutions.append(("%mappings", os.path.join(config.source_root, "mappings")))
config.substitutions.append(("%src", config.source_root))
