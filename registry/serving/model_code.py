"""The models-from-code entry point of every registered redflow version.

``register_edit`` logs this file as the version's ``python_model`` (MLflow's models-from-code, see
https://mlflow.org/docs/latest/ml/model/models-from-code/): MLflow copies it into the model and runs it
when the model loads, so a version holds this source file, its artifacts and its ``model_config`` -
no pickled object. It needs the ``registry`` package (installed with redflow, or bundled into the
model with ``register_edit(..., bundle_code=True)``).
"""
import mlflow

from registry.serving.pyfunc import RedEditModel

mlflow.models.set_model(RedEditModel())
