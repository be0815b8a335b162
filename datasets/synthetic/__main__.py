"""``python -m datasets.synthetic --out DIR --n N --seed S``: see :func:`generate.main`."""

from datasets.synthetic.generation import main

raise SystemExit(main())
