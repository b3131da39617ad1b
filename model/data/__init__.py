"""The audio data of a study: where it comes from (built-in sources, bring-your-own layouts,
unlabelled corpora), how it is prepared and split, and the log-mel features and crops
pretraining and probes read. The network side (ViT, masks, JEPA, training, probes) is in
`model`."""
