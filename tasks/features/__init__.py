"""Features of the raw clip stores: square log-mel slices (spectrogram study), VGGish embeddings (AudioSet study)."""
