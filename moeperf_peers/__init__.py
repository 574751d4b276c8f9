"""Peers: the MoE layers users run instead of moeperf's, as moeperf plugins.

Shipped with moeperf as optional extras and written exactly as an outside plugin would be:
each module has `moeperf_implementations()` and is found through moeperf's entry-point group
(`moeperf.implementations`, declared in moeperf's pyproject.toml), never imported by moeperf.
A peer whose package is missing still declares its implementations; each refuses with its
reason (the package to install), so `moeperf list` shows what could run.

- `moeperf_peers.hf`: Hugging Face transformers' sparse-MoE blocks (extra `peers`).
"""
