"""Train the demo's digits CNN (seeded) and write it with its data next to this file."""

from pathlib import Path

from toolchain.demo import write_demo_inputs

if __name__ == "__main__":
    folder = Path(__file__).resolve().parent
    write_demo_inputs(folder, write_pipeline=False)
    print(f"wrote {folder / 'digits_cnn.keras'}, digits_train.npz, digits_eval.npz")
