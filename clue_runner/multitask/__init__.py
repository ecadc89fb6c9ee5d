"""Several tasks in one run on one shared encoder.

    schedule.py   which task's batch each micro-batch takes (a pure function of seed and position: resumable)
    weighting.py  per-task losses → the loss the trainer backpropagates (fixed, initial-loss, real-time,
                  gradient-norm, MGDA, primary/auxiliary), registered in plugins.WEIGHTINGS
    model.py      the shared backbone with one head per task
    build.py      assembly (over engine.build's pieces) and the per-task views used for scoring and predictions
"""
