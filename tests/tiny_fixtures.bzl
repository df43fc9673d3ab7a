"""tiny_fixtures: runs tests/tiny_fixtures.py once, into a directory all test targets share.

Every py_test is its own pytest session; without this each would build the same tiny vocab,
hub modules and training run again (~40 s a target). The output is a directory (a tree
artifact) that pytest_runner.py hands to conftest.py through BERT_TF2_TINY_FIXTURES.
"""

def _tiny_fixtures_impl(ctx):
    output = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [output],
        tools = [ctx.attr.builder[DefaultInfo].files_to_run],
        # Quiet unless it fails (Bazel prints what a successful action writes, too).
        command = 'log="$("$1" "$2" 2>&1)" || ' +
                  '{ status=$?; printf "%s\\n" "$log" | tail -n 200 >&2; exit $status; }',
        arguments = [ctx.executable.builder.path, output.path],
        mnemonic = "TinyTestFixtures",
        progress_message = "Building the tiny test fixtures (vocab, hub modules, a training run)",
        # The builder is a py_binary: it runs the first python3 on the client's PATH (the
        # venv, as the tests do through --test_env=PATH). Bazel 4 passes that PATH to actions
        # that use the default shell environment (without --incompatible_strict_action_env).
        use_default_shell_env = True,
    )
    return [DefaultInfo(files = depset([output]), runfiles = ctx.runfiles(files = [output]))]

tiny_fixtures = rule(
    implementation = _tiny_fixtures_impl,
    attrs = {
        "builder": attr.label(executable = True, cfg = "exec", mandatory = True),
    },
)
