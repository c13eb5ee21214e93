"""Below every stage: errors (SimDiffError, Cancelled), atomic file writes, typed JSON records. Imports
nothing from the stages.
"""
