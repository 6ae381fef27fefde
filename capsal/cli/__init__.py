"""The command-line apps: thin Hydra apps over plain functions (``train(cfg)``, ``explain(cfg)``, ``evaluate(cfg)``,
``extract(cfg)``); shared helpers live in the modules outside ``cli/``, so the apps never import each other."""
