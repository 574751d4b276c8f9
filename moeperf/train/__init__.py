"""Training correctness checks: a small LM whose feed-forward block is any moeperf layer."""
