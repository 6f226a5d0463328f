"""The models-from-code entry point of a serving bundle (``registry.serving.bundle``): the multi-task pyfunc.

MLflow copies this file into each bundle version and runs it when the bundle loads; the version's
``model_config`` is its serving config. No pickled object; it needs the redflow package installed.
"""
import mlflow

from registry.serving.multitask import MultiTaskModel

mlflow.models.set_model(MultiTaskModel())
