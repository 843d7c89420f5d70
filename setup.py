"""Build hook: compiles the sparse kernels (fedprune/deploy/kernels/_native.c, _structured.c) at `pip install`.

Everything else is in pyproject.toml. The extension is optional: where no flag set compiles
(no C compiler, no OpenMP), the install still succeeds and fedprune.deploy.kernels falls back to
torch's CSR with a warning. -march=native is fine because the install builds on the machine
that runs it; a copy moved to an older CPU must be rebuilt.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# tried in order: tuned for this CPU, then portable; each with OpenMP, then one-threaded
FLAG_SETS = (
    (["-O3", "-march=native", "-fopenmp", "-Wno-psabi"], ["-fopenmp"]),
    (["-O3", "-march=native", "-Wno-psabi"], []),
    (["-O3", "-fopenmp", "-Wno-psabi"], ["-fopenmp"]),
    (["-O3", "-Wno-psabi"], []),
)


class OptionalNativeBuild(build_ext):
    """Build each extension with the first flag set that works; never fail the install."""

    def build_extension(self, ext):
        errors = []
        for compile_args, link_args in FLAG_SETS:
            ext.extra_compile_args, ext.extra_link_args = compile_args, link_args
            try:
                super().build_extension(ext)
                return
            except Exception as err:  # compiler missing or flag refused: try the next set
                errors.append(f"{' '.join(compile_args)}: {err}")
        self.warn(f"could not compile {ext.name} ({'; '.join(errors)}); "
                  "fedprune.deploy.kernels will fall back to torch's CSR")


setup(
    ext_modules=[Extension("fedprune.deploy.kernels._native",
                           ["fedprune/deploy/kernels/_native.c", "fedprune/deploy/kernels/_structured.c"],
                           depends=["fedprune/deploy/kernels/_native.h"], optional=True)],
    cmdclass={"build_ext": OptionalNativeBuild},
)
