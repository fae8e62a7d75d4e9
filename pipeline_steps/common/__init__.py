"""What every layer uses: user errors, atomic writes and checkpoints, seeding, progress lines and
the device choice. Imports nothing from the rest of the package.
"""
