"""Training: the spectrogram study's nets on log-mel slices, the AudioSet study's on VGGish embeddings."""
