"""Stage 1, multi-task pretraining: ``python -m recipes.pretrain fit --config recipes/configs/pretrain/demo.yaml``."""

from recipes.cli import main

if __name__ == "__main__":
    main()
