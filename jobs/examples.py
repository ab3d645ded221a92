"""The embedded default job: what `ltx2-farm render` renders when given nothing else.

Small enough for the tiny model on a CPU in seconds; with the real checkpoints it is an ordinary
two-second two-stage render.
"""

DEMO_JOB: dict = {
    "name": "demo",
    "prompt": (
        "A red fox trots through fresh snow in a quiet pine forest at dawn; "
        "snow crunches under its paws and a raven calls in the distance."
    ),
    "seed": 10,
    "height": 256,
    "width": 384,
    "duration": 2.0,
    "frame_rate": 24.0,
    "recipe": "two_stage",
    "steps": 8,
}
