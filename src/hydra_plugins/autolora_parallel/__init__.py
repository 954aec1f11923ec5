"""hydra/launcher=parallel (conf/hydra/launcher/parallel.yaml): autolora's launcher, found by Hydra's plugin scan."""
