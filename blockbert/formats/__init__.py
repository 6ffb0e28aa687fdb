"""Files of models and runs: a run directory's layout (``run_dir``), safe loading (``safe_load``), our checkpoints and
runs (``checkpoints``), Hugging Face directories in and out (``convert``), the public model classes with
``from_pretrained``/``save_pretrained`` (``pretrained``), transformers' Auto classes (``hf_auto``), the export's
model card (``model_card``), config composition from conf/ (``compose``), the typed configs (``schema``) and the
paper's models (``presets``).
Nothing is imported here, so that the light modules stay light."""
