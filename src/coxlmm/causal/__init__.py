"""Causal checks: does the model *use* the concepts? Edit its residual stream with them, against controls.

    plan.py      tensors -> what to edit (pure): unit directions of the concepts and of their controls,
                 steps in units of the state's norm, the target-position edits
    requests.py  the typed model-stage requests a plan becomes (target edits, steering, caption
                 cross-entropy), each with the stage that fills it (cached in the feature store)
    stages.py    the Lightning predict modules and the cached store runs behind the requests
    scores.py    results -> numbers (pure): steering success parsed from the captions, fluency, CE
                 recovered, KL, bootstrap intervals clustered by test sample
    metric.py    the `Causal` metric: its plan, and its scores with their description

The metric plans from cached tensors, the pipeline fills its requests (the model is loaded only when
a result is missing), and the metric scores the results; nothing else in the package runs the model.
"""
