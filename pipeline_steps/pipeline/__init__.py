"""The pipeline around the methods: parameters and machine settings, the plan of stages and their
paths, the stage runner and the stages the rules call, MLflow tracking, checks before a run, and
the command line. The top layer: it may import everything else.
"""
