"""Built-in models: torch definitions whose weights come from a checkpoint (cifar_resnet.py) or a seeded training run
on the experiment's train split (digits_cnn.py, mobilenet_cifar.py, training.py); catalog.py names the trained ones
and finds their shipped exports without importing torch."""
