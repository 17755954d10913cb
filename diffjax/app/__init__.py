"""Applications on diffjax's primitives: what takes a workdir, a config or a sampler name.

* :mod:`~diffjax.app.config`, :mod:`~diffjax.app.builders`: run configs and the models,
  schedules and denoisers they describe;
* :mod:`~diffjax.app.train`, :mod:`~diffjax.app.checkpoint`: the training loop over a
  workdir and its verified checkpoints;
* :mod:`~diffjax.app.sampler_specs`: samplers by name (``'dpm++2m@logsnr'``), parsed once
  into a frozen spec;
* :mod:`~diffjax.app.generate`: sampling a trained UNet, jitted, guidance traced;
* :mod:`~diffjax.app.evaluate`, :mod:`~diffjax.app.features`,
  :mod:`~diffjax.app.guidance_sweep`, :mod:`~diffjax.app.reports`: evaluation, sweeps
  and their files, tables and plots;
* :mod:`~diffjax.app.demo`, :mod:`~diffjax.app.cli`: the ``diffjax`` command;
* :mod:`~diffjax.app.images`, :mod:`~diffjax.files`: image grids and atomic writes.

Nothing in the primitives (schedules, parameterization, guidance, losses, samplers,
nn, metrics, networks) imports from here. Submodules are imported on use.
"""
