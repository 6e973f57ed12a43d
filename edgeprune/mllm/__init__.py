"""Multimodal LLM support: pruned vision-encoder outputs fed to a language model."""
