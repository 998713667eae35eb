"""The audio model MLflow serves: audio in (a path, or base64 bytes), the mood and class probabilities out.

Logged as "models from code" (tasks.predict.pyfunc) beside each torch model, with the torch model, its card
and, for VGGish models with published weights, the VGGish and PCA files as artifacts: the served model needs
neither this workspace nor the tracking server.
  mlflow models serve -m models:/mood-spectrogram-small-cnn-audio@champion --env-manager local -p 5001
  curl -X POST localhost:5001/invocations -H 'Content-Type: application/json' \\
       -d '{"dataframe_records": [{"audio_base64": "...", "filename": "song.mp3"}]}'
A `path` is read on the serving host, so it is refused unless MOOD_SERVE_ALLOW_PATHS=1 is set where every
caller may read its files. Requests are answered one at a time; a long one may need
MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (60 s by default) raised.
"""

from __future__ import annotations

from typing import Any

from mlflow.pyfunc import PythonModel

import mlflow


class AudioMoodModel(PythonModel):
    def load_context(self, context: Any) -> None:
        import threading

        from tasks.predict.pyfunc import load_predictor

        self.predictor = load_predictor(context.artifacts)
        # The scoring server runs each request on a thread of its own; one prediction at a time keeps the
        # predictor's worker threads and torch's thread count to one request's.
        self.lock = threading.Lock()

    # No type hints here: MLflow would read them as the model's input schema, which the signature already is.
    def predict(self, context, model_input, params=None):
        from tasks.predict.pyfunc import predict_frame

        with self.lock:
            return predict_frame(self.predictor, model_input, params or {})


mlflow.models.set_model(AudioMoodModel())
