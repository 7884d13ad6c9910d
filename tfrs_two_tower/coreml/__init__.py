"""The Core ML pair: conversion, features.json, and a numpy emulation of the MIL program.

Core ML cannot run on Linux. What this package verifies here is the saved MIL
program (`.mlpackage` reloaded from disk) evaluated op by op in numpy with
coremltools' own value inference: an emulation of the MIL program, not Apple's
runtime.
"""
