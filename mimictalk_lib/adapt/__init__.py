"""SD-Hybrid adaptation (MimicTalk §3): LPIPS, the personalised renderer's trainable state,
the training loop and the adapter file."""
