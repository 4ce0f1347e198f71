import sys
import time

# Never write the ready frame; exit when the VM closes our stdin.
sys.stdin.buffer.read()
