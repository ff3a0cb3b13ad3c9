"""Shared test set-up: quiet TensorFlow, two logical CPU devices for multi-replica tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
