"""Run schemathesis's CLI (`st`) as the contract test needs it.

On CPython 3.11 (Debian's), Hypothesis's pretty description of filter lambdas parses source
files with `ast.parse`, which intermittently raises CPython's "AST constructor recursion depth
mismatch" SystemError inside schemathesis's generators; schemathesis then reports a runtime
error of the run. The description is only a repr, so it is replaced by a plain name here.
"""
import sys

import hypothesis.internal.lambda_sources as lambda_sources

lambda_sources.lambda_description = lambda f: "lambda"

from schemathesis.cli import schemathesis  # noqa: E402

sys.argv[0] = "st"
schemathesis()
