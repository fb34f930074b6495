"""Progression forecasting from a baseline and follow-up visit pair and the interval between them."""

from visionfm_core.tasks.family import Family, register_family
from visionfm_core.tasks.forecasting.metrics import FORECASTING_METRIC_NAMES, ForecastingMetric, forecasting_metrics
from visionfm_core.tasks.forecasting.model import (
    FORECASTING_FEATURES,
    CLSFeaturesHead,
    PatchMeanFeaturesHead,
    SinusoidalIntervalEncoding,
    VisionFMForecastingModel,
)
from visionfm_core.tasks.forecasting.transforms import MAX_INTERVAL_DAYS, ForecastingInputsd, load_forecasting_datalist
from visionfm_core.tasks.forecasting.writer import ForecastingWriter, forecast_pred_label

__all__ = [
    "FAMILY",
    "CLSFeaturesHead",
    "PatchMeanFeaturesHead",
    "FORECASTING_FEATURES",
    "SinusoidalIntervalEncoding",
    "VisionFMForecastingModel",
    "MAX_INTERVAL_DAYS",
    "load_forecasting_datalist",
    "ForecastingInputsd",
    "FORECASTING_METRIC_NAMES",
    "forecasting_metrics",
    "ForecastingMetric",
    "forecast_pred_label",
    "ForecastingWriter",
]

FAMILY = register_family(Family(
    "forecasting",
    "Progression forecasting from a baseline and follow-up visit pair and the interval between them.",
    served_as="classification",
))
