"""Studies built on normlens, one module per study; each is registered as an entry point of the
group ``normlens.studies`` in pyproject.toml and run by ``normlens analyze NAME``.

``analyses.common`` holds the pieces studies share: training the zoo (or reusing its checkpoints)
and running each analysis over a set of models, saving the results as data for the report's
renderers (:mod:`normlens.report.sections`). normlens never imports this package.
"""
