# The collector stays off while the runner imports (runtime.steady_heap turns it back on):
# it would walk the half-built modules again and again, a tenth of the start-up's CPU, which
# several workers starting at once on a small machine wait for.
import gc

gc.disable()

from styldod_batch.cli import run  # noqa: E402

run()
