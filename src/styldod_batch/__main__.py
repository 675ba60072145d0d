from styldod_batch.cli import run

run()
