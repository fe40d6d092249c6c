"""Stage 1, multi-task pretraining.

Run ``python -m recipes.pretrain fit --config recipes/configs/pretrain/demo.yaml``.
"""

from recipes.cli import main

if __name__ == "__main__":
    main()
