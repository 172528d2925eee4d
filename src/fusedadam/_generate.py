"""Functions made from a signature, for the front ends generated from the registry.

The optimizer classes' constructors (``optim.py``) and the ``functional`` functions are
made from ``_algorithms.py``. They are real Python functions, compiled from a ``def`` line
that names the parameters (as ``dataclasses`` makes ``__init__``): their signatures,
defaults and annotations (``inspect.signature``, Sphinx) and their argument errors
(``Adam.__init__() got an unexpected keyword argument ...``) are those a hand-written
``def`` would have, and a call costs no more than one.
"""

import inspect

__all__ = ["define"]

_EMPTY = inspect.Parameter.empty


def define(qualname, signature, body, namespace, module, doc=None):
    """A function named ``qualname`` with ``signature`` whose body is ``body``.

    ``body`` is Python source (unindented) that refers to the parameters by name and to
    the names of ``namespace``; ``signature`` gives the parameters' kinds, defaults and
    annotations (and the return annotation).
    """
    words = []
    star = False
    for p in signature.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            words.append("*" + p.name)
            star = True
        elif p.kind is p.VAR_KEYWORD:
            words.append("**" + p.name)
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                words.append("*")
                star = True
            words.append(p.name)
    name = qualname.rpartition(".")[2]
    lines = body.strip("\n").splitlines()
    source = f"def {name}({', '.join(words)}):\n" + "".join(f"    {line}\n" for line in lines)
    scope = dict(namespace)
    exec(compile(source, f"<fusedadam generated {qualname}>", "exec"), scope)
    fn = scope[name]
    parameters = signature.parameters.values()
    positional = [p.default for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    fn.__defaults__ = tuple(d for d in positional if d is not _EMPTY) or None
    fn.__kwdefaults__ = {
        p.name: p.default
        for p in parameters
        if p.kind is p.KEYWORD_ONLY and p.default is not _EMPTY
    } or None
    annotations = {p.name: p.annotation for p in parameters if p.annotation is not _EMPTY}
    if signature.return_annotation is not _EMPTY:
        annotations["return"] = signature.return_annotation
    fn.__annotations__ = annotations
    fn.__qualname__ = qualname
    fn.__module__ = module
    fn.__doc__ = doc
    if hasattr(fn.__code__, "co_qualname"):  # Python >= 3.11 names it in argument errors
        fn.__code__ = fn.__code__.replace(co_qualname=qualname)
    return fn
