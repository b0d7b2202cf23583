"""The CAREER model and its trainer. `import trainer` must not import DeepSpeed or Ray.

Four layers, each importing only itself and the layers before it (`LAYERS` in
tests/test_imports.py):

    models/        the model kinds (CAREER in models/career.py, the baselines), pure nn.Modules,
                   their registry and shared output
    parts          accelerator, rng, distributed, monitor, config, schedule, safe_load,
                   checkpoint_store, package, finetune: no DeepSpeed
    run            engine (the one DeepSpeed door), context, step, meter, evaluation, elastic,
                   checkpointer, export
    entry points   loop, launch, closed_form (`career pretrain --model markov`), preflight
"""
