"""moeperf: compute and memory scaling of Mixture-of-Experts layers versus dense MLPs.

Flow: spec -> implementations (layers, registry) -> measurement -> results -> report.
"""

__version__ = "0.1.0"
