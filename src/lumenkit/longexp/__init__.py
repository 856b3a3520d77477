"""lumenkit.longexp: computational long-exposure photography from a burst (Tabellion et al., TOG 2023).

Modules: data (burst readers, ground-truth burst synthesizer), align (faces, subject mask, KLT tracks,
RANSAC homographies, frame selection), motion (MotionPredictor interface + optical-flow predictor),
render (eq. 6 ramp blur, eq. 7/8 spline blur, eq. 9 soft gamma), composite (M_flow, joint bilateral,
face protection, blend), pipeline (the run), evaluate (metrics vs truth), cli.
"""
