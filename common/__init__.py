"""What the worker and the operator share, free of torch and engine code: the settings declaration
(``settings``) and model-source parsing (``model_source``)."""
